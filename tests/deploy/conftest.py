"""Fixtures of the deploy tests: the fake Kubernetes API and Helm installs into it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from deploy_manifests import HelmRunner, Release, render_values, start_fake_api

if TYPE_CHECKING:
    from deploy_fake_api import FakeKubeAPI


@pytest.fixture(scope="session")
def fake_kube_api() -> Iterator[FakeKubeAPI]:
    """A Kubernetes API on 127.0.0.1: discovery for built-in kinds and the CRDs; accepts creates."""
    api = start_fake_api()
    yield api
    api.stop()


@pytest.fixture(scope="session")
def helm(fake_kube_api: FakeKubeAPI, tmp_path_factory: pytest.TempPathFactory) -> HelmRunner:
    """Installs the chart into the fake API with the real Helm library."""
    return HelmRunner(fake_kube_api, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def releases(helm: HelmRunner) -> dict[str, Release]:
    """The chart installed with its defaults and with each environment's values file."""
    return {name: helm.install(values) for name, values in render_values().items()}


@pytest.fixture(scope="session")
def scheduled(helm: HelmRunner) -> Release:
    """The chart with the Argo schedule on and the one-off RayJob off."""
    return helm.install({"schedule": {"enabled": True}, "rayJob": {"enabled": False}})
