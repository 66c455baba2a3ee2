"""The Helm values `pipeline plan` prints for a target install as they say.

The values snippet of a sized plan, merged over the chart's defaults, gives a RayJob whose
worker groups scale to the pods planned, of the planned shape, and a config with one
inference actor per GPU.
"""

from __future__ import annotations

import yaml
from deploy_manifests import HelmRunner, rayjob_spec_of

from pipeline.config import load_config
from pipeline.run import group_sizing


def test_sized_values_install(helm: HelmRunner, tmp_path) -> None:
    """20M images/hour + 25% at 900 img/s per GPU, 200 per core: 4 pods of 2 GPUs, 3 of 16 cores."""
    config = load_config(None, [f"input.uri={tmp_path}", "model.random_init=true"], environ={})
    decode = group_sizing.Rate(200.0, "flag", "--decode-rate")
    model = group_sizing.Rate(900.0, "flag", "--model-rate")
    sized = group_sizing.size_cluster(
        config, 20_000_000, 0.25, decode, model, group_sizing.PodShape(cpus=16, gpus=2)
    )
    release = helm.install(yaml.safe_load(group_sizing.values_snippet(sized["helm_values"])))
    groups = {
        group["groupName"]: group
        for group in rayjob_spec_of(release.one("RayJob"))["rayClusterSpec"]["workerGroupSpecs"]
    }
    assert (groups["cpu"]["maxReplicas"], groups["gpu"]["maxReplicas"]) == (3, 4)
    assert groups["gpu"]["minReplicas"] <= groups["gpu"]["maxReplicas"]
    (gpu_container,) = groups["gpu"]["template"]["spec"]["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert str(gpu_container["resources"]["limits"]["cpu"]) == "8"
    assert groups["gpu"]["rayStartParams"]["num-gpus"] == "2"
    pipeline_config = yaml.safe_load(release.pipeline_config()["data"]["config.yaml"])
    assert pipeline_config["resources"]["max_actors"] == 8
