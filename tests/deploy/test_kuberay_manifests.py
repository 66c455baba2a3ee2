"""deploy/kuberay: plain manifests for users without Helm, kept equal to the chart."""

from __future__ import annotations

import os

import pytest
import yaml
from deploy_kuberay import DATED_OUTPUT, PLAIN_FILES, chart_values, expected_manifests, write
from deploy_manifests import KUBERAY_DIR, HelmRunner, Release, validate


@pytest.fixture(scope="module")
def expected(helm: HelmRunner) -> dict[str, list[dict]]:
    """What each deploy/kuberay file must hold, from the chart rendered with chart-values.yaml."""
    release: Release = helm.install(chart_values())
    files = expected_manifests(release)
    if os.environ.get("BATCH_INFERENCE_WRITE_KUBERAY") == "1":
        write(files)
    return files


def load_all(name: str) -> list[dict]:
    """One manifest file's objects, one per YAML document."""
    return [doc for doc in yaml.safe_load_all((KUBERAY_DIR / name).read_text(encoding="utf-8")) if doc]


def load(name: str) -> dict:
    """The object of a one-object manifest file."""
    (obj,) = load_all(name)
    return obj


class TestKubeRayManifests:
    """The plain manifests are valid and equal to the chart's rendering."""

    @pytest.mark.parametrize("name", [*PLAIN_FILES, "raycronjob.yaml"])
    def test_manifest_equals_chart(self, expected: dict[str, list[dict]], name: str) -> None:
        """Each file holds exactly the chart's objects (regenerate with BATCH_INFERENCE_WRITE_KUBERAY=1)."""
        assert load_all(name) == expected[name]

    @pytest.mark.parametrize("name", [*PLAIN_FILES, "raycronjob.yaml"])
    def test_manifest_validates(self, name: str) -> None:
        """Each file validates: built-in kinds with kubernetes-validate, custom resources with their CRDs."""
        objects = load_all(name)
        assert objects
        for obj in objects:
            if "generateName" in obj["metadata"]:
                obj["metadata"]["name"] = obj["metadata"]["generateName"] + "x7k2q"
            validate(obj)

    def test_raycronjob_runs_the_chart_rayjob(self) -> None:
        """The RayCronJob's job is the RayJob's spec; only the entrypoint adds the dated output location."""
        rayjob = load("rayjob.yaml")["spec"]
        template = load("raycronjob.yaml")["spec"]["jobTemplate"]
        config = yaml.safe_load(load("configmap.yaml")["data"]["config.yaml"])
        assert template.pop("entrypoint") == (
            f"{rayjob.pop('entrypoint')} --set output.uri={config['output']['uri']}/{DATED_OUTPUT}"
        )
        assert template == rayjob
        assert load("raycronjob.yaml")["spec"]["schedule"] == chart_values()["schedule"]["cron"]

    def test_rayjob_is_created_fresh_each_time(self) -> None:
        """rayjob.yaml has a generateName, so every `kubectl create -f` starts a new, uniquely named run."""
        metadata = load("rayjob.yaml")["metadata"]
        assert "name" not in metadata
        assert metadata["generateName"] == "batch-inference-"
