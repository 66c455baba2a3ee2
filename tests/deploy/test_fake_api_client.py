"""The fake Kubernetes API answers as a real client expects: the official client reads back what Helm made.

Helm is one client of deploy_fake_api.py; the official Python client is another, with its own
discovery (the dynamic client), typed models and errors. Reading the installed release back
through it shows the fake serves discovery, objects and 404s the way the tests assume a real API
server does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_fake_api import BUILTIN_RESOURCES, EXISTING_OBJECTS, FakeKubeAPI, crd_resources
from deploy_manifests import CRD_DIR, NAMESPACE, RELEASE, HelmRunner, Release
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

SERVER_SET = {"uid", "resourceVersion", "creationTimestamp", "namespace"}  # metadata the API server sets


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeKubeAPI, Release]]:
    """The chart's defaults installed into a fake API of its own that serves reads of what it got."""
    resources = {**BUILTIN_RESOURCES, **crd_resources(CRD_DIR)}
    api = FakeKubeAPI(resources=resources, existing=dict(EXISTING_OBJECTS), serve_created=True).start()
    try:
        yield api, HelmRunner(api, tmp_path_factory.mktemp("client-helm")).install()
    finally:
        api.stop()


@pytest.fixture(scope="module")
def api_client(installed: tuple[FakeKubeAPI, Release]) -> Iterator[client.ApiClient]:
    """The official client, configured with the fake API's address."""
    configuration = client.Configuration(host=installed[0].url)
    with client.ApiClient(configuration) as api_client:
        yield api_client


def test_every_created_object_reads_back_through_discovery(installed, api_client, tmp_path: Path) -> None:
    """The dynamic client finds each kind by discovery and gets each object Helm created, as created."""
    _, release = installed
    discovered = dynamic.DynamicClient(api_client, cache_file=str(tmp_path / "discovery.json"))
    assert sorted((o["kind"], o["metadata"]["name"]) for o in release.posted) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in release.objects
    )
    for obj in release.posted:  # as Helm sent them (with its ownership annotations)
        kind = discovered.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        read: dict[str, Any] = kind.get(name=obj["metadata"]["name"], namespace=NAMESPACE).to_dict()
        assert read["metadata"]["namespace"] == NAMESPACE
        assert set(read["metadata"]) >= SERVER_SET
        sent = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "namespace"}}
        read["metadata"] = {k: v for k, v in read["metadata"].items() if k not in SERVER_SET}
        assert read == sent, f"{obj['kind']}/{obj['metadata']['name']}"


def test_typed_reads_and_a_missing_object(installed, api_client) -> None:
    """Typed reads deserialise into the client's models; a missing object is the client's 404 ApiException."""
    _, release = installed
    core = client.CoreV1Api(api_client)
    rendered = release.pipeline_config()
    configmap = core.read_namespaced_config_map(rendered["metadata"]["name"], NAMESPACE)
    assert isinstance(configmap, client.V1ConfigMap)
    assert configmap.data == rendered["data"]
    policy = client.PolicyV1Api(api_client)
    budget = policy.read_namespaced_pod_disruption_budget(f"{RELEASE}-head", NAMESPACE)
    assert budget.spec.max_unavailable == 0
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("not-installed", NAMESPACE)
    assert missing.value.status == 404
