"""A deleted head pod drains its Ray job, then fails the attempt: the head's preStop on a local Ray cluster.

Kubernetes runs the ray-head container's preStop hook before it sends SIGTERM to the container's
main process (`ray start --head --block`), which is not the job's driver. The hook sends SIGTERM
to the driver itself (the pid the Jobs API names), so the driver drains and exits 143 and the job
ends FAILED, which KubeRay retries; a stop through the Jobs API would end it STOPPED, which
KubeRay never retries. Here the nodes run with their rendered containers' environment (Ray token
authentication included), the rendered entrypoint is submitted as KubeRay's HTTPMode does, and
once a part is written the rendered preStop command runs as the kubelet would run it: the same
argv, the container's environment.

The model is slow on purpose (ResNet-50 on 512-pixel crops, one thread, one call at a time, 24
images a call): when the SIGTERM comes, a call has seconds to go, which the driver finishes and
writes before it exits.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
import yaml
from deploy_manifests import CHART
from helpers import whole_parts
from PIL import Image
from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources
from ray.job_submission import JobStatus, JobSubmissionClient
from test_rayjob_local_cluster import local_config, submit_when_ready

if TYPE_CHECKING:
    from deploy_manifests import HelmRunner, Release

pytestmark = pytest.mark.slow
IMAGES = 72
BATCH = 24  # images per model call, and rows per part: three calls in all
CROP = 512
TOKEN = "local-test-ray-token-5f0c2b9e"  # noqa: S105 - the Secret's value on this test cluster
JOB_TIMEOUT_S = 600
# A job whose entrypoint has not connected to Ray, as the pipeline's while it lists its inputs
# and loads its model: the Jobs API names no driver, so the hook signals the entrypoint's processes.
LISTENING = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)); "
    "print('listening', flush=True); time.sleep(3600)"
)
NOT_CONNECTED = shlex.join(["python", "-c", LISTENING])
ENDED = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
Obj = dict[str, Any]


def container_env(container: Obj, secrets: dict[tuple[str, str], str], home: Path) -> dict[str, str]:
    """A container's environment as the kubelet sets it: values, and secretKeyRefs from ``secrets``.

    HOME (the pod's /tmp emptyDir) is a folder of this test's own.
    """
    env = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"], ref["key"]]
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home)}


def wait_for_end(client: JobSubmissionClient, job_id: str) -> JobStatus:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job_id)) not in ENDED:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-5000:]
        time.sleep(0.5)
    return status


def start_as_rendered(local_cluster, cluster_spec: Obj, tmp_path: Path) -> dict[str, str]:
    """The head and one node of each worker group, each with its container's rendered environment
    (so with Ray token authentication); returns the head container's environment."""
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    secrets = {(values["rayAuth"]["existingSecret"], values["rayAuth"]["secretKey"]): TOKEN}
    (head,) = [
        c for c in cluster_spec["headGroupSpec"]["template"]["spec"]["containers"] if c["name"] == "ray-head"
    ]
    head_env = container_env(head, secrets, tmp_path / "head-tmp")
    assert head_env["RAY_AUTH_MODE"] == "token"
    local_cluster.headers = {"Authorization": f"Bearer {TOKEN}"}
    local_cluster.start_head(env=head_env)
    for group in cluster_spec["workerGroupSpecs"]:  # as test_rayjob_local_cluster.py starts them
        name, params = group["groupName"], group["rayStartParams"]
        (worker,) = group["template"]["spec"]["containers"]
        resources = json.dumps(_get_custom_resources({}, params, name))
        gpus = [f"--num-gpus={params['num-gpus']}"] if "num-gpus" in params else []  # declared, not present
        env = container_env(worker, secrets, tmp_path / f"{name}-tmp")
        local_cluster.add_node(name, "--num-cpus=1", f"--resources={resources}", *gpus, env=env)
    return head_env


def slow_job(release: Release, tmp_path: Path) -> tuple[Obj, Path]:
    """The rendered entrypoint and runtime env, with the chart's config pointed at local images and
    output and slowed down (module docstring); the output folder."""
    make_images(tmp_path / "images")
    out = tmp_path / "out"
    config = local_config(release.pipeline_config()["data"]["config.yaml"], tmp_path / "images", out)
    config["model"] = {"name": "resnet50", "random_init": True, "top_k": 3}
    config.setdefault("preprocess", {}).update(resize_size=CROP, crop_size=CROP, batch_size=BATCH)
    config["inference"].update(batch_size=BATCH, torch_threads=1)
    config["output"]["rows_per_file"] = BATCH
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    spec = release.one("RayJob")["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    runtime_env["env_vars"]["PIPELINE_OUTPUT__URI"] = str(out)
    entrypoint = spec["entrypoint"].replace("/etc/pipeline/config.yaml", str(config_file))
    return {"entrypoint": entrypoint, "runtime_env": runtime_env}, out


def test_a_deleted_head_pod_fails_the_attempt_after_the_driver_drains(
    helm: HelmRunner, local_cluster, tmp_path: Path, reliability
) -> None:
    """preStop SIGTERMs each driver: it drains, its job ends FAILED (143); a retry does the rest."""
    # The chart's render, its dashboard port the local head's, so the hook's argv runs as rendered;
    # twice the default drain time, for a loaded 2-core machine (the hook took 48 s under load 6-14).
    release = helm.install({"ports": {"dashboard": local_cluster.dashboard_port}, "stopGraceSeconds": 120})
    cluster_spec = release.one("RayJob")["spec"]["rayClusterSpec"]
    head_pod = cluster_spec["headGroupSpec"]["template"]["spec"]
    (hook,) = [
        c["lifecycle"]["preStop"]["exec"]["command"] for c in head_pod["containers"] if "lifecycle" in c
    ]
    grace, hold = head_pod["terminationGracePeriodSeconds"], float(hook[-1])
    head_env = start_as_rendered(local_cluster, cluster_spec, tmp_path)
    job, out = slow_job(release, tmp_path)
    client = JobSubmissionClient(local_cluster.dashboard_url, headers=local_cluster.headers)
    listing = submit_when_ready(client, entrypoint=NOT_CONNECTED)
    job_id = client.submit_job(**job)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    # Until a model call has landed (the next one is under way) and the other job waits for its signal.
    while not whole_parts(out) or "listening" not in client.get_job_logs(listing):
        for running in (job_id, listing):
            assert client.get_job_status(running) not in ENDED, client.get_job_logs(running)[-5000:]
        assert time.monotonic() < deadline, "no part was written"
        time.sleep(0.2)
    before = whole_parts(out)
    assert client.get_job_info(job_id).driver_info is not None  # the pipeline has connected to Ray
    assert client.get_job_info(listing).driver_info is None

    # The kubelet's part: the preStop hook, as rendered, in the container's environment (where
    # KubeRay adds RAY_ADDRESS); whatever still runs after the grace period is SIGKILLed.
    started = time.monotonic()
    hook_env = {**local_cluster.env, **head_env, "RAY_ADDRESS": local_cluster.address}
    stopped = subprocess.run(hook, env=hook_env, capture_output=True, text=True, timeout=grace, check=False)
    returned = time.time()
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert time.monotonic() - started < grace

    logs = client.get_job_logs(job_id)
    ended = [client.get_job_info(submission) for submission in (job_id, listing)]
    for info in ended:  # what KubeRay reads: FAILED, so it retries the RayJob
        assert (info.status, info.driver_exit_code) == (JobStatus.FAILED, 143), (info.message or "")[-5000:]
        assert "exit code 143" in (info.message or "")
    assert returned - max(info.end_time or 0 for info in ended) / 1000 >= hold  # the operator's poll sees it
    assert "interrupted by SIGTERM" in logs, logs[-5000:]  # the driver drained, then said why it stopped
    (summary_file,) = out.glob("_summary-*.json")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    assert (summary["status"], summary["error"]) == ("interrupted", "interrupted by SIGTERM"), summary
    after, kept = whole_parts(out), summary["processed_this_run"]
    assert 0 < kept == sum(after.values()) < IMAGES  # the summary counts the rows in the parts
    assert before.items() <= after.items()
    assert sorted(after) == sorted(p.name for p in out.glob("data/*.parquet"))  # every part is whole

    rerun = submit_when_ready(client, **job)  # what KubeRay's retry submits
    assert wait_for_end(client, rerun) == JobStatus.SUCCEEDED, client.get_job_logs(rerun)[-8000:]
    manifest = json.loads((out / "_SUCCESS").read_text(encoding="utf-8"))
    assert manifest["resumed"] is True
    assert manifest["processed_this_run"] == IMAGES - kept  # nothing written is done again
    ids = pq.read_table(out / "data", columns=["row_id"]).column("row_id").to_pylist()
    assert len(ids) == len(set(ids)) == manifest["counts"]["inputs"] == IMAGES
    reliability.append(
        {
            "scenario": "head pod deleted during the write (preStop: the job FAILED), then retried",
            "faults": 1,
            "inputs": IMAGES,
            "rows_lost": IMAGES - len(set(ids)),
            "rows_duplicated": len(ids) - len(set(ids)),
        }
    )


def make_images(root: Path) -> None:
    """Small JPEGs of plain colours, none broken."""
    root.mkdir(parents=True)
    for index in range(IMAGES):
        colour = ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)
        Image.new("RGB", (96 + index, 80), colour).save(root / f"img-{index:03d}.jpg", quality=85)
