"""deploy/kuberay: plain manifests for users without Helm, kept equal to the chart.

deploy/helm/sync-kuberay.py writes them; these tests check they are what it would write now.
"""

from __future__ import annotations

import pytest
import yaml
from deploy_manifests import KUBERAY_DIR, HelmRunner, load_script, validate

sync_kuberay = load_script("sync-kuberay.py")
SYNC = ".venv/bin/python deploy/helm/sync-kuberay.py"


@pytest.fixture(scope="module")
def expected(helm: HelmRunner) -> dict[str, str]:
    """The text sync-kuberay.py would write to each deploy/kuberay file."""
    texts: dict[str, str] = sync_kuberay.render(helm)
    return texts


def load_all(name: str) -> list[dict]:
    """One manifest file's objects, one per YAML document."""
    return [doc for doc in yaml.safe_load_all((KUBERAY_DIR / name).read_text(encoding="utf-8")) if doc]


def load(name: str) -> dict:
    """The object of a one-object manifest file."""
    (obj,) = load_all(name)
    return obj


class TestKubeRayManifests:
    """The plain manifests are valid and equal to the chart's rendering."""

    def test_script_writes_these_files(self, expected: dict[str, str]) -> None:
        """The script writes exactly the files below, and no others."""
        assert sorted(expected) == sorted(sync_kuberay.FILES)

    @pytest.mark.parametrize("name", sync_kuberay.FILES)
    def test_manifest_is_up_to_date(self, expected: dict[str, str], name: str) -> None:
        """Each file is, byte for byte, what sync-kuberay.py writes from the chart as it is now."""
        assert (KUBERAY_DIR / name).read_text(encoding="utf-8") == expected[name], (
            f"deploy/kuberay/{name} differs from the chart's rendering: run {SYNC}"
        )

    @pytest.mark.parametrize("name", sync_kuberay.FILES)
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
        output = f"{config['output']['uri']}/{sync_kuberay.DATED_OUTPUT}"
        assert template.pop("entrypoint") == f"{rayjob.pop('entrypoint')} --set output.uri={output}"
        assert template == rayjob
        assert load("raycronjob.yaml")["spec"]["schedule"] == sync_kuberay.chart_values()["schedule"]["cron"]

    def test_rayjob_is_created_fresh_each_time(self) -> None:
        """rayjob.yaml has a generateName, so every `kubectl create -f` starts a new, uniquely named run."""
        metadata = load("rayjob.yaml")["metadata"]
        assert "name" not in metadata
        assert metadata["generateName"] == "batch-inference-"
