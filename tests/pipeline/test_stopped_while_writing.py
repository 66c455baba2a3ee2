"""A run disturbed while its parts are being written: the same exit codes and true counts as anywhere else.

A real ``pipeline run`` (its own embedded Ray) is stopped once a part is written: by another
job taking its output over (a higher lease epoch appears, as a job that found the lease expired
would write it) or by a stall (its inference actor stopped with SIGSTOP). Ray Data is still
writing then; the run must exit with its own code (7, 6) and say how many rows it really wrote.
A run whose inference actor is killed (SIGKILL) goes on and commits, and Ray's word about the
dead worker is a log line, not text on the run's stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import committed_checkpoints

from pipeline.cli import samples
from pipeline.config import dump_yaml

pytestmark = pytest.mark.slow

IMAGES = 160
DEADLINE_S = 300.0
STALL_S = 20
# Small batches and parts, one torch thread: seconds pass between parts, so the stop lands mid-write.
PACE = {
    "output__rows_per_file": 8,
    "preprocess__batch_size": 4,
    "preprocess__resize_size": 160,
    "preprocess__crop_size": 160,
    "inference__batch_size": 4,
    "inference__torch_threads": 1,
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough small JPEGs for several parts."""
    root = tmp_path_factory.mktemp("images")
    samples.make_images(root, IMAGES, seed=21, sizes=((160, 120), (120, 160)), png_every=0, broken=False)
    return root


def rows_written(out: Path) -> int:
    """Rows of the parts the checkpoints vouch for."""
    return sum(pq.read_metadata(path).num_rows for path in committed_checkpoints(out))


def start(config, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """``pipeline run`` in its own process group; stderr to a file (JSON lines), stdout piped."""
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(config), encoding="utf-8")
    err = tmp_path / "stderr.log"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with err.open("w") as handle:
        job = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            env=env,
            start_new_session=True,
        )
    return job, err


def wait_for_a_part(out: Path, job: subprocess.Popen[str], err: Path) -> None:
    """Until a part is written (not a fixed sleep); fail if the run ends first."""
    deadline = time.monotonic() + DEADLINE_S
    while not committed_checkpoints(out):
        assert job.poll() is None, f"the run ended before it could be stopped:\n{err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no part written in time"
        time.sleep(0.1)


def finish(job: subprocess.Popen[str]) -> tuple[int, str]:
    """The run's exit code and stdout; then nothing of its process group is left running."""
    try:
        stdout, _ = job.communicate(timeout=DEADLINE_S)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a stopped actor would outlive its driver
            os.killpg(job.pid, signal.SIGKILL)
    return job.returncode, stdout


def descendants(root: int) -> dict[int, str]:
    """The processes under ``root`` (the driver starts the raylet, which starts the workers): pid -> args."""
    listed = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True)
    parent, args = {}, {}
    for line in listed.stdout.splitlines():
        pid, ppid, *command = line.split(maxsplit=2)
        parent[int(pid)], args[int(pid)] = int(ppid), " ".join(command)
    found = {}
    for pid, first in parent.items():
        ancestor = first
        while ancestor > 1 and ancestor != root:
            ancestor = parent.get(ancestor, 0)
        if ancestor == root:
            found[pid] = args[pid]
    return found


def summary_of(out: Path) -> dict:
    """The run's summary, written whatever the outcome."""
    [path] = out.glob("_summary-*.json")
    return json.loads(path.read_text())


def check_ended_clean(err: Path, code: int) -> list[str]:
    """No Ray crash after the cause; the last line is the cause with the run's exit code. The lines."""
    lines = err.read_text(errors="replace").splitlines()
    assert "core worker has already been shut" not in "\n".join(lines)
    last = json.loads(lines[-1])
    assert (last["level"], last["exit_code"]) == ("error", code), lines[-1]
    return lines


def test_losing_the_lease_while_writing_exits_7_with_the_rows_written(images, make_config, tmp_path):
    """Another job takes the output over mid-write: exit 7 naming it, and the rows really written."""
    config = make_config(images, output__lease_seconds=3, **PACE)
    out = Path(config.output.uri)
    job, err = start(config, tmp_path)
    wait_for_a_part(out, job, err)
    now = time.time()
    taker = {
        "epoch": 2,
        "token": "another-job",
        "host": "other-host",
        "pid": 4242,
        "run_id": "run-that-took-over",
        "acquired_at": now,
        "expires_at": now + 600,
    }
    (out / "_lease" / "epoch-000002.json").write_text(json.dumps(taker), encoding="utf-8")
    code, stdout = finish(job)
    assert code == 7, err.read_text()[-3000:]
    lines = check_ended_clean(err, 7)
    assert "lost its lease" in lines[-1]
    assert "run 'run-that-took-over' (host other-host, pid 4242)" in lines[-1]
    summary = summary_of(out)
    assert summary["status"] == "failed"
    # What the parts held when the run stopped; the abandoned write may land a part after the count.
    assert 0 < summary["processed_this_run"] <= rows_written(out)
    assert not (out / "_SUCCESS").exists()
    assert "(raylet)" not in stdout


def test_a_stall_while_writing_exits_6_with_the_rows_written(images, make_config, tmp_path):
    """The inference actor stops (SIGSTOP) mid-write: exit 6 after stall_timeout_s, the rows written said."""
    # Long enough for the actor to start on a loaded machine: the stall is timed from the write's start.
    config = make_config(images, resources__stall_timeout_s=STALL_S, **PACE)
    out = Path(config.output.uri)
    job, err = start(config, tmp_path)
    wait_for_a_part(out, job, err)
    actors = [pid for pid, args in descendants(job.pid).items() if "Classify" in args]
    assert actors, "no inference actor found under the run's driver"
    for pid in actors:
        os.kill(pid, signal.SIGSTOP)
    try:
        code, stdout = finish(job)
    finally:
        for pid in actors:  # a stopped process outlives its raylet: kill it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert code == 6, err.read_text()[-3000:]
    lines = check_ended_clean(err, 6)
    assert f"no progress for {STALL_S}s" in lines[-1]
    assert not any("lost its lease" in line for line in lines)
    summary = summary_of(out)
    assert summary["error"].startswith(f"no progress for {STALL_S}s")
    assert summary["processed_this_run"] == rows_written(out) > 0  # stalled: nothing lands after the count
    assert "(raylet)" not in stdout


def test_a_killed_inference_actor_leaves_stdout_to_the_summary(images, make_config, tmp_path):
    """SIGKILL of the inference actor mid-write: the run commits; the raylet's lines are logs, not stdout."""
    config = make_config(images, **PACE)
    out = Path(config.output.uri)
    job, err = start(config, tmp_path)
    wait_for_a_part(out, job, err)
    actors = [pid for pid, args in descendants(job.pid).items() if "Classify" in args]
    assert actors, "no inference actor found under the run's driver"
    os.kill(actors[0], signal.SIGKILL)
    code, stdout = finish(job)
    assert code == 0, err.read_text()[-3000:]
    first, *rest = stdout.splitlines()
    assert first == f"run {json.loads((out / '_SUCCESS').read_text())['run_id']}: succeeded", stdout[:3000]
    assert [line.split()[0] for line in rest[:2]] == ["output", "task"]  # the summary, nothing between
    assert "\x1b[" not in stdout
    assert "(raylet)" not in stdout
    lines = [json.loads(line) for line in err.read_text().splitlines()]
    died = [line for line in lines if line.get("worker") == "raylet" and "worker died" in line["event"]]
    assert died, "the raylet's word about the killed worker was not relayed"
    assert died[0]["level"] == "warning"
