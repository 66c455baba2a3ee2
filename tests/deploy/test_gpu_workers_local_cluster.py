"""A GPU group that scales from zero, on a local multi-node Ray cluster run as KubeRay runs the job.

The head does no work (num-cpus 0) and a CPU node is up; the GPU group has no node when the
job starts. The driver asks for a GPU worker and waits in the named phase
``waiting_for_gpu_workers``; the test plays the autoscaler and starts a node carrying the GPU
group's resources. The job then places its inference actors only there and commits. When no
node comes, the job fails with exit code 10 once ``resources.gpu_workers_timeout_s`` has passed.

The GPU node declares ``--num-gpus=1`` without having one, so the test's config keeps torch on
the CPU (``inference.device: cpu``) while the actors still ask for a GPU
(``resources.actor_num_gpus: 1``): what is shown is the placement and the wait, and the run
records honestly that its model ran on a CPU. The chart's own config (``device: auto``) plans
CUDA from the same groups: test_chart_placement.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
import yaml
from deploy_manifests import rayjob_spec_of
from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources
from ray.job_submission import JobStatus, JobSubmissionClient
from test_rayjob_local_cluster import local_config, make_images, submit_when_ready

if TYPE_CHECKING:
    from deploy_manifests import Release

pytestmark = pytest.mark.slow
JOB_TIMEOUT_S = 600
WAIT_S = 20.0  # resources.gpu_workers_timeout_s of the case where no GPU worker comes
ENDED = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def scheduled_spec(release: Release) -> dict[str, Any]:
    """The RayJob spec prod's schedule creates each night."""
    return rayjob_spec_of(release.one("CronWorkflow"))


def group_params(release: Release) -> dict[str, dict[str, Any]]:
    """rayStartParams of each worker group of the scheduled RayJob."""
    spec = scheduled_spec(release)["rayClusterSpec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    return {group["groupName"]: group["rayStartParams"] for group in spec["workerGroupSpecs"]}


def start_without_gpus(cluster, release: Release) -> None:
    """The head (no work) and one node of the CPU group: the GPU group is scaled to zero."""
    cluster.start_head()
    cpu = _get_custom_resources({}, group_params(release)["cpu"], "cpu")
    cluster.add_node("cpu", "--num-cpus=1", f"--resources={json.dumps(cpu)}")


def start_gpu_node(cluster, release: Release) -> None:
    """One node of the GPU group: its group resource and its declared GPUs (not really there)."""
    params = group_params(release)["gpu"]
    gpu = _get_custom_resources({}, params, "gpu")
    cluster.add_node(
        "gpu", "--num-cpus=1", f"--num-gpus={params['num-gpus']}", f"--resources={json.dumps(gpu)}"
    )


def submit(
    cluster, release: Release, tmp_path: Path, **resources: object
) -> tuple[JobSubmissionClient, str, Path]:
    """Submit the rendered entrypoint with the chart's config, pointed at local images and output."""
    rayjob = scheduled_spec(release)
    runtime_env = yaml.safe_load(rayjob["runtimeEnvYAML"])
    del runtime_env["env_vars"]["PIPELINE_OUTPUT__URI"]  # the night's S3 prefix; here a local folder
    # prod's nights are incremental: the night before, here a folder with nothing in it (the first
    # night), which the rendered previous_missing=full_run turns into a full run.
    assert runtime_env["env_vars"]["PIPELINE_OUTPUT__PREVIOUS_MISSING"] == "full_run"
    runtime_env["env_vars"]["PIPELINE_OUTPUT__PREVIOUS"] = str(tmp_path / "night-before")
    config = local_config(
        release.pipeline_config()["data"]["config.yaml"], tmp_path / "images", tmp_path / "out"
    )
    assert config["resources"]["placement"] == "worker_groups"
    assert config["resources"]["worker_groups"]["gpu"]["min_replicas"] == 0  # prod's scale from zero
    config["inference"]["device"] = "cpu"  # the declared GPU is not there: see the module docstring
    config["resources"].update(actor_num_gpus=1, **resources)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    client = JobSubmissionClient(cluster.dashboard_url)
    job_id = submit_when_ready(
        client,
        entrypoint=rayjob["entrypoint"].replace("/etc/pipeline/config.yaml", str(config_file)),
        runtime_env=runtime_env,
    )
    return client, job_id, tmp_path / "out"


def wait_for_phase(client: JobSubmissionClient, job_id: str, phase: str) -> None:
    """Until the driver logs that it entered ``phase``."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while f'"phase": "{phase}"' not in client.get_job_logs(job_id):
        assert client.get_job_status(job_id) not in ENDED, client.get_job_logs(job_id)[-5000:]
        assert time.monotonic() < deadline, f"no phase {phase} after {JOB_TIMEOUT_S}s"
        time.sleep(0.25)


def wait_for_end(client: JobSubmissionClient, job_id: str) -> JobStatus:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job_id)) not in ENDED:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-5000:]
        time.sleep(0.5)
    return status


def run_summary(out: Path) -> dict[str, Any]:
    (path,) = out.glob("_summary-*.json")
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return summary


@pytest.fixture
def cluster_without_gpus(releases: dict[str, Release], module_local_cluster):
    """The module's cluster as each job here finds it: the head and a CPU node, no GPU node.

    The tests share one cluster (its start is most of their time); the case that never gets a GPU
    node runs first, and a GPU node an earlier test started is stopped again, and seen gone, first.
    """
    cluster = module_local_cluster
    if not cluster.nodes:
        start_without_gpus(cluster, releases["prod"])
    if "gpu" in cluster.nodes:
        cluster.stop_node("gpu")
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while any("gpu_group" in n["resources_total"] for n in cluster.alive_nodes()):
            assert time.monotonic() < deadline, "the stopped GPU node is still alive"
            time.sleep(0.25)
    return cluster


def test_a_gpu_worker_that_never_comes_fails_the_job_with_exit_10(
    releases: dict[str, Release], cluster_without_gpus, tmp_path: Path
) -> None:
    """No GPU node ever: past resources.gpu_workers_timeout_s, exit 10 naming the group; summary failed."""
    release = releases["prod"]
    make_images(tmp_path / "images")
    client, job_id, out = submit(cluster_without_gpus, release, tmp_path, gpu_workers_timeout_s=WAIT_S)
    assert wait_for_end(client, job_id) == JobStatus.FAILED
    assert client.get_job_info(job_id).driver_exit_code == 10
    logs = client.get_job_logs(job_id)
    assert "no worker of the GPU group 'gpu' (pods of 1 GPU and 4 CPUs, 0 to 8 of them)" in logs
    assert "resources.gpu_workers_timeout_s" in logs

    summary = run_summary(out)
    assert (summary["status"], summary["phase"]) == ("failed", "waiting_for_gpu_workers")
    assert "'GPU': 1" in summary["error"]  # what was asked of the autoscaler
    assert WAIT_S <= summary["phases"]["waiting_for_gpu_workers"] < WAIT_S + 60  # the bound, not more
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob("data/*.parquet"))


def test_the_job_waits_for_its_gpu_worker_and_runs_inference_only_there(
    releases: dict[str, Release], cluster_without_gpus, tmp_path: Path
) -> None:
    """No GPU node at start: the job waits (waiting_for_gpu_workers), then runs its actors there, commits."""
    from ray.util.state import list_actors

    release = releases["prod"]
    local_cluster = cluster_without_gpus
    inputs = make_images(tmp_path / "images")
    client, job_id, out = submit(local_cluster, release, tmp_path)
    wait_for_phase(client, job_id, "waiting_for_gpu_workers")
    start_gpu_node(local_cluster, release)  # the autoscaler's part: the GPU pod joins
    status = wait_for_end(client, job_id)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-8000:]

    summary = run_summary(out)
    assert summary["status"] == "succeeded"
    assert summary["phases"]["waiting_for_gpu_workers"] > 0
    assert summary["timings"]["gpu_workers_ready"] < summary["timings"]["first_batch"]
    manifest = json.loads((out / "_SUCCESS").read_text(encoding="utf-8"))
    assert manifest["resource_plan"]["actor_num_gpus"] == 1
    assert manifest["resource_plan"]["inference_device"] == "cpu"  # as configured: no real GPU here
    assert pq.read_table(out / "data").num_rows == inputs

    gpu_nodes = {n["node_id"] for n in local_cluster.alive_nodes() if "gpu_group" in n["resources_total"]}
    ray_job = client.get_job_info(job_id).job_id  # this job's actors: the cluster is shared
    classify_nodes = {
        actor.node_id
        for actor in list_actors(address=local_cluster.dashboard_url, detail=True, limit=1_000)
        if "Classify" in actor.class_name and actor.job_id == ray_job
    }
    assert len(gpu_nodes) == 1
    assert classify_nodes == gpu_nodes
