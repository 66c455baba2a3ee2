"""Run what the RayJob runs: its entrypoint and runtimeEnvYAML through the Ray Jobs API on a local cluster."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources
from ray.job_submission import JobSubmissionClient

if TYPE_CHECKING:
    from deploy_manifests import Release

GOOD_IMAGES = 24
JOB_TIMEOUT_S = 600
AGENT_TIMEOUT_S = 120


def make_images(root: Path) -> int:
    """Small JPEGs of plain colours plus one file that is not an image; returns the input count."""
    root.mkdir(parents=True)
    for index in range(GOOD_IMAGES):
        colour = ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)
        Image.new("RGB", (96 + index, 80), colour).save(root / f"img-{index:03d}.jpg", quality=85)
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    return GOOD_IMAGES + 1


def local_config(rendered: str, images: Path, output: Path) -> dict[str, Any]:
    """The chart's config.yaml pointed at local storage and a tiny random-weight model."""
    config: dict[str, Any] = yaml.safe_load(rendered)
    config["input"] = {"uri": str(images)}
    config["output"] = {**config.get("output", {}), "uri": str(output)}
    config["model"] = {"name": "mobilenet_v3_small", "random_init": True, "top_k": 3}
    config.pop("storage", None)
    # The GPU node declares a GPU it does not have: the actors still ask for one (placement),
    # torch runs on the CPU, and the run records it so (test_gpu_workers_local_cluster.py).
    config.setdefault("inference", {})["device"] = "cpu"
    config.setdefault("resources", {}).update(min_actors=1, max_actors=1, actor_num_gpus=1)
    config.setdefault("metrics", {})["pushgateway_url"] = None
    return config


def submit_when_ready(client: JobSubmissionClient, **job: Any) -> str:
    """Submit as KubeRay's operator does in HTTPMode, waiting for the head's job agent to come up."""
    deadline = time.monotonic() + AGENT_TIMEOUT_S
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def cluster(releases: dict[str, Release], local_cluster):
    """Head (num-cpus 0) + a CPU node and a GPU node advertising the chart's group resources."""
    spec = releases["default"].one("RayJob")["spec"]["rayClusterSpec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    local_cluster.start_head()
    cpu = _get_custom_resources({}, groups["cpu"]["rayStartParams"], "cpu")
    gpu = _get_custom_resources({}, groups["gpu"]["rayStartParams"], "gpu")
    num_gpus = int(groups["gpu"]["rayStartParams"]["num-gpus"])  # declared, not present: torch uses the CPU
    local_cluster.add_node("cpu", "--num-cpus=1", f"--resources={json.dumps(cpu)}")
    local_cluster.add_node("gpu", "--num-cpus=1", f"--num-gpus={num_gpus}", f"--resources={json.dumps(gpu)}")
    return local_cluster


@pytest.mark.slow
def test_rendered_rayjob_succeeds_on_a_local_cluster(
    releases: dict[str, Release], cluster, tmp_path: Path
) -> None:
    """The rendered entrypoint + runtimeEnvYAML, submitted to the Jobs API as HTTPMode does, commit."""
    from ray.job_submission import JobStatus

    release = releases["default"]
    rayjob = release.one("RayJob")["spec"]
    mounted = "/etc/pipeline/config.yaml"
    assert shlex.split(rayjob["entrypoint"]) == ["pipeline", "run", "--config", mounted]

    inputs = make_images(tmp_path / "images")
    output = tmp_path / "output"
    config_file = tmp_path / "etc-pipeline" / "config.yaml"
    config_file.parent.mkdir()
    rendered = release.pipeline_config()["data"]["config.yaml"]
    config_file.write_text(
        yaml.safe_dump(local_config(rendered, tmp_path / "images", output)), encoding="utf-8"
    )

    # The RayJob names its output in its runtime env (the ConfigMap's, so a RayJob rendered alone
    # writes where its values say); the local run points it, like the mounted config, at tmp_path.
    runtime_env = yaml.safe_load(rayjob["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["PIPELINE_OUTPUT__URI"] == yaml.safe_load(rendered)["output"]["uri"]
    runtime_env["env_vars"]["PIPELINE_OUTPUT__URI"] = str(output)
    client = JobSubmissionClient(cluster.dashboard_url)
    job_id = submit_when_ready(
        client,
        entrypoint=rayjob["entrypoint"].replace(mounted, str(config_file)),
        runtime_env=runtime_env,
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job_id)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        assert time.monotonic() < deadline, (
            f"job still {status} after {JOB_TIMEOUT_S}s:\n{client.get_job_logs(job_id)[-5000:]}"
        )
        time.sleep(0.5)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-8000:]

    manifest = json.loads((output / "_SUCCESS").read_text(encoding="utf-8"))
    table = pq.read_table(output / "data")
    assert table.num_rows == inputs
    assert len(set(table.column("row_id").to_pylist())) == inputs
    statuses = table.column("status").to_pylist()
    assert statuses.count("failed") == 1
    assert manifest
    # The driver logged JSON lines (config logging.format: json), as the cluster's log collector expects.
    assert any(line.startswith("{") and '"run_id"' in line for line in logs.splitlines())
