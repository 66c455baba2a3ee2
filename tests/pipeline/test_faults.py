"""Faults during a run: a killed inference actor, a lost worker node, out-of-memory batches.

Each scenario must commit with every input exactly once; results go to the reliability report.
The same worker hooks also record how the local inference actor runs its calls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import wait_for_parts

from pipeline.cli import samples

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """160 small JPEGs: enough batches for a fault to land mid-run."""
    root = tmp_path_factory.mktemp("many")
    samples.make_images(root, 160, seed=3, sizes=((160, 120), (120, 160)), png_every=0, broken=False)
    return root


# The groups of the local clusters below: CPU nodes of 1 CPU, one node with a declared GPU.
LOCAL_GROUPS = {
    "cpu": {"cpus": 1, "max_replicas": 2, "resources": {"cpu_group": 1000}},
    "gpu": {"cpus": 1, "gpus": 1, "max_replicas": 1, "resources": {"gpu_group": 1000}},
}


# The nodes of the cluster the two fault tests share: one head, two CPU nodes (one may be lost),
# one node with a declared GPU.
FAULT_NODES = {
    "cpu-a": ("--num-cpus=1", '--resources={"cpu_group": 1000}'),
    "cpu-b": ("--num-cpus=1", '--resources={"cpu_group": 1000}'),
    "gpu": ("--num-cpus=1", "--num-gpus=1", '--resources={"gpu_group": 1000}'),
}


@pytest.fixture
def fault_cluster(module_local_cluster):
    """The module's cluster with its head and every node of FAULT_NODES up: a node an earlier
    test lost is started again, so each test starts from the same cluster in any order."""
    if "head" not in module_local_cluster.nodes:
        module_local_cluster.start_head()
    for name, args in FAULT_NODES.items():
        if name not in module_local_cluster.nodes:
            module_local_cluster.add_node(name, *args)
    return module_local_cluster


def _write_config(tmp_path: Path, images: Path, weights: Path, **resources: object) -> Path:
    """A worker_groups config with small batches and parts, so a fault lands mid-run."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"uri": str(images)},
                "model": {"name": "resnet18", "weights": str(weights)},
                "output": {"uri": str(tmp_path / "out"), "rows_per_file": 8},
                "preprocess": {"batch_size": 8},
                # The GPU nodes declare a GPU they do not have: torch on the CPU, the actor asks for one.
                "inference": {"precision": "fp32", "batch_size": 8, "device": "cpu"},
                "resources": {
                    "placement": "worker_groups",
                    "decode_num_cpus": 0.5,
                    "stall_timeout_s": 300,
                    "actor_num_gpus": 1,
                    "worker_groups": LOCAL_GROUPS,
                    **resources,
                },
                "logging": {"format": "json", "progress": False},
            }
        )
    )
    return config


def _start_job(cluster, config: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    log = (tmp_path / "job.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cluster.env,
        start_new_session=True,
    )


def _wait_for_parts(out: Path, job: subprocess.Popen[bytes], minimum: int = 2, timeout: float = 300) -> None:
    """Evidence that the run is under way: committed part files, not a fixed sleep."""
    wait_for_parts(
        lambda: list((out / "data").glob("part-*.parquet")),
        lambda parts: len(parts) >= minimum,
        job,
        timeout_s=timeout,
    )


def _check_exactly_once(out: Path, images: Path, job: subprocess.Popen[bytes], tmp_path: Path) -> dict:
    assert job.wait(timeout=600) == 0, (tmp_path / "job.log").read_text()[-3000:]
    manifest = json.loads((out / "_SUCCESS").read_text())
    table = pq.read_table(out / "data", columns=["row_id", "uri", "status"])
    inputs = {str(p) for p in images.rglob("*.jpg")}
    uris = table.column("uri").to_pylist()
    lost = len(inputs - set(uris))
    duplicated = len(uris) - len(set(uris))
    assert lost == 0
    assert duplicated == 0
    assert manifest["counts"] == {"inputs": len(inputs), "succeeded": len(inputs), "failed": 0}
    return {"inputs": len(inputs), "rows_lost": lost, "rows_duplicated": duplicated}


def _run_with_fault(cluster, images: Path, weights: Path, tmp_path: Path, inject) -> dict:
    """Start the job on ``cluster``, call ``inject()`` once parts exist, check exactly-once."""
    config = _write_config(tmp_path, images, weights, ray_address=cluster.address)
    job = _start_job(cluster, config, tmp_path)
    try:
        _wait_for_parts(tmp_path / "out", job)
        inject()
        return _check_exactly_once(tmp_path / "out", images, job, tmp_path)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)


def _run_local_with_hook(
    config: Path, hook: str, marker: Path, *overrides: str
) -> subprocess.CompletedProcess[str]:
    """Run the job on a 2-CPU embedded cluster whose every worker first runs ``fault_hooks.<hook>``."""
    # The hooks' folder first, then the driver's own path: workers import the package it imports.
    workers_path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    script = f"""
import ray
from pipeline.config import load_config
from pipeline.run.job import run_job
ray.init(num_cpus=2, include_dashboard=False, runtime_env={{
    "worker_process_setup_hook": "fault_hooks.{hook}",
    "env_vars": {{"PYTHONPATH": {workers_path!r}, "FAULT_MARKER": {str(marker)!r}}},
}})
config = load_config(
    {str(config)!r}, ["resources.placement=local", "resources.actor_num_gpus=null", *{list(overrides)!r}]
)
summary = run_job(config)
print("ROWS", summary.succeeded, summary.failed)
"""
    command = [sys.executable, "-c", script]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def test_out_of_memory_batches_are_retried_smaller(many_images, weights_file, tmp_path, reliability):
    """Every batch over 4 images runs out of memory: the actor halves its batch and all rows succeed."""
    marker = tmp_path / "oom-injected"
    config = _write_config(tmp_path, many_images, weights_file)
    run = _run_local_with_hook(config, "oom_above_4", marker, "input.limit=40")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ROWS 40 0" in run.stdout
    assert "injected OOM for a batch of 8" in marker.read_text()
    table = pq.read_table(tmp_path / "out" / "data", columns=["row_id", "status"])
    assert table.num_rows == len(set(table.column("row_id").to_pylist())) == 40
    reliability.append(
        {
            "scenario": "out-of-memory batches",
            "faults": "every batch > 4",
            "inputs": 40,
            "rows_lost": 0,
            "rows_duplicated": 0,
        }
    )


def test_local_cpu_actor_runs_two_calls_at_once(many_images, weights_file, tmp_path):
    """On 2 CPUs the plan's one inference actor runs two model calls at the same time, in two threads.

    Two calls in one process instead of two processes is what saves a second actor's start-up;
    Ray Data runs an actor's calls one at a time unless told otherwise, so check they overlap.
    """
    calls = tmp_path / "calls"
    config = _write_config(tmp_path, many_images, weights_file)
    overrides = ("input.limit=64", "preprocess.batch_size=8")
    run = _run_local_with_hook(config, "record_predict_calls", calls, *overrides)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ROWS 64 0" in run.stdout
    records = [line.split() for line in calls.read_text().splitlines()]
    assert len({pid for pid, *_ in records}) == 1, "one actor process"
    assert len({thread for _, thread, *_ in records}) >= 2, "calls ran in two threads"
    spans = [(thread, float(start), float(end)) for _, thread, start, end in records]
    overlapping = [(a, b) for a in spans for b in spans if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]]
    assert overlapping, f"no two calls overlapped: {spans}"


def test_job_that_cannot_progress_fails_clearly(sample_images, make_config, tmp_path):
    """Stages that no node can host (no worker groups here) fail after stall_timeout_s, not hang.

    Run as `pipeline run` with its own embedded cluster: the stuck dataset ends with that
    cluster, not in a later test's process.
    """
    config = make_config(
        sample_images,
        resources__placement="worker_groups",
        resources__worker_groups="{cpu: {cpus: 1, max_replicas: 1, resources: {cpu_group: 1000}}, "
        "gpu: {cpus: 1, max_replicas: 1, resources: {gpu_group: 1000}}}",  # declared, never started
        resources__stall_timeout_s="8",
        input__limit=8,
    )
    path = tmp_path / "stall.yaml"
    path.write_text(config.model_dump_json())
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 6, run.stderr[-3000:]
    assert "no progress for 8s at 0/8 rows (resources.stall_timeout_s)" in run.stderr
    assert not (Path(config.output.uri) / "_SUCCESS").exists()


# Last in the module: the cluster these two share stays up until the module ends.
def test_killed_inference_actor_is_replaced(fault_cluster, many_images, weights_file, tmp_path, reliability):
    """SIGKILL of the inference actor's process mid-run: Ray restarts it, the run commits, nothing lost."""
    from ray.util.state import list_actors

    local_cluster = fault_cluster

    def kill_actor() -> None:
        actors = [
            a
            for a in list_actors(address=local_cluster.dashboard_url, detail=True)
            if "Classify" in a.class_name and a.state == "ALIVE"
        ]
        assert actors, "no live inference actor found"
        os.kill(actors[0].pid, signal.SIGKILL)

    result = _run_with_fault(local_cluster, many_images, weights_file, tmp_path, kill_actor)
    reliability.append({"scenario": "inference actor SIGKILL", "faults": 1, **result})


def test_lost_worker_node(fault_cluster, many_images, weights_file, tmp_path, reliability):
    """A CPU worker node killed mid-run: its tasks rerun on the other node, the run commits once."""
    local_cluster = fault_cluster

    def lose_node() -> None:
        # The progress tracker must sit on the driver's node (the head), or losing a node
        # that happens to host it fails the run: check that first, then lose the node.
        from ray.util.state import list_actors, list_nodes

        head = [n.node_id for n in list_nodes(address=local_cluster.dashboard_url) if n.is_head_node]
        trackers = [
            a.node_id
            for a in list_actors(address=local_cluster.dashboard_url, detail=True)
            if a.class_name == "ProgressTracker" and a.state == "ALIVE"
        ]
        assert trackers == head, f"progress tracker on {trackers}, driver's node is {head}"
        local_cluster.stop_node("cpu-b")

    result = _run_with_fault(local_cluster, many_images, weights_file, tmp_path, lose_node)
    reliability.append({"scenario": "worker node lost", "faults": 1, **result})
