"""The chart's worker groups reach the pipeline's config, and the plan is made from them.

A GPU group that scales from zero has no pod when the driver starts: the plan must come from
what the chart declares (resources.worker_groups in the rendered ConfigMap), so `pipeline plan`
on the rendered config shows GPU inference whatever cluster is up, or none at all.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from deploy_manifests import ENVIRONMENTS, REPO, HelmRefused, HelmRunner, rayjob_spec_of
from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources

from pipeline.cli import samples
from pipeline.compute.inference import CUDA_AUTO_BATCH

if TYPE_CHECKING:
    from deploy_manifests import Release

ALL_VALUES = ["default", *ENVIRONMENTS]


def rendered_config(release: Release) -> dict[str, Any]:
    """The pipeline config the release's ConfigMap mounts."""
    config: dict[str, Any] = yaml.safe_load(release.pipeline_config()["data"]["config.yaml"])
    return config


def declared_by_rayjob(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What Ray will see of each worker group of a RayJob spec, read as KubeRay's autoscaler reads it."""
    groups = {}
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        params = group["rayStartParams"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpu = str(params.get("num-cpus", limits["cpu"]))
        groups[group["groupName"]] = {
            "cpus": math.ceil(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)),
            "gpus": int(params.get("num-gpus", 0)),
            "memory": str(limits["memory"]),
            "min_replicas": group["minReplicas"],
            "max_replicas": group["maxReplicas"],
            "resources": _get_custom_resources({}, params, group["groupName"]),
        }
    return groups


class TestDeclaredGroups:
    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_config_declares_the_rayjobs_groups(self, releases: dict[str, Release], values: str) -> None:
        """resources.worker_groups in the ConfigMap is what the RayJob's worker groups give Ray."""
        release = releases[values]
        declared = rendered_config(release)["resources"]["worker_groups"]
        specs = [rayjob_spec_of(o) for o in release.objects if o["kind"] in ("RayJob", "CronWorkflow")]
        assert specs
        for spec in specs:
            assert declared == declared_by_rayjob(spec)

    def test_prod_declares_a_gpu_group_scaling_from_zero(self, releases: dict[str, Release]) -> None:
        """Prod: up to 8 one-GPU pods, none before the run asks (the case the live cluster got wrong)."""
        gpu = rendered_config(releases["prod"])["resources"]["worker_groups"]["gpu"]
        assert gpu == {
            "cpus": 4,
            "gpus": 1,
            "memory": "24Gi",
            "min_replicas": 0,
            "max_replicas": 8,
            "resources": {"gpu_group": 1000},
        }

    def test_groups_set_in_config_are_refused(self, helm: HelmRunner) -> None:
        """config.resources.worker_groups is the chart's to render: setting it fails the install."""
        groups = {"gpu": {"cpus": 4, "gpus": 1, "max_replicas": 99, "resources": {"gpu_group": 1000}}}
        with pytest.raises(HelmRefused, match="rendered from workerGroups"):
            helm.install({"config": {"resources": {"worker_groups": groups}}})

    def test_a_cpu_limit_in_millicores_is_rounded_up_as_kuberay_does(self, helm: HelmRunner) -> None:
        """A 1500m CPU group is 2 Ray CPUs, as KubeRay's num-cpus makes it."""
        cpu = {"limits": {"cpu": "1500m", "memory": "4Gi"}, "requests": {"cpu": "1500m", "memory": "4Gi"}}
        release = helm.install({"workerGroups": {"cpu": {"resources": cpu}}})
        assert rendered_config(release)["resources"]["worker_groups"]["cpu"]["cpus"] == 2


@pytest.mark.slow
def test_pipeline_plan_on_prod_config_shows_gpu_inference(
    releases: dict[str, Release], tmp_path: Path
) -> None:
    """`pipeline plan` on prod's rendered config, no GPU anywhere: CUDA, 1 GPU per actor, the GPU batch."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(releases["prod"].pipeline_config()["data"]["config.yaml"], encoding="utf-8")
    images = tmp_path / "images"
    samples.make_images(images, 3, seed=2, broken=False)
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    local = [
        *("--set", f"input.uri={images}", "--set", f"output.uri={tmp_path / 'out'}"),
        *("--set", "model.weights=null", "--set", "model.random_init=true"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "plan", "--config", str(config_file), *local, "--json"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)
    inference = plan["stages"]["inference"]
    assert (inference["device"], inference["num_gpus"]) == ("cuda", 1)
    assert inference["batch_size"] == CUDA_AUTO_BATCH
    assert inference["actors"] == "1..8"
    assert inference["resources"] == {"gpu_group": 0.001}
    assert plan["cluster"] == {"CPU": 16 * 8 + 8 * 4, "GPU": 8}  # declared, at most replicas
