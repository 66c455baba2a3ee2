"""SIGINT and SIGTERM stop a real `pipeline run` and keep its finished work.

Kubernetes sends SIGTERM first (SIGKILL after its grace period); a terminal sends SIGINT.
During the write the run stops feeding new inputs, lets the batches in flight finish,
writes the open part and exits 130 or 143 within ``resources.stop_grace_s``, without a
traceback. Its summary says ``interrupted`` with the rows it wrote; the same command
resumes and redoes at most one batch per actor.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import whole_parts

from pipeline.cli import samples
from pipeline.config import dump_yaml

pytestmark = pytest.mark.slow
IMAGES = 120
BATCH = 4  # images per model call; the local plan runs one actor
GRACE_S = 30.0
EXIT_SLACK_S = 60.0  # the summary, the log flush and the process's exit after the grace, on a loaded machine
# A pace slow enough that rows are in flight when the signal comes: small model calls on one
# thread each, JSON logs to follow the run's phases.
PACE = {
    "inference__batch_size": BATCH,
    "inference__torch_threads": 1,
    "preprocess__batch_size": 16,
    "logging__format": "json",
    "resources__stop_grace_s": GRACE_S,
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small JPEGs, none broken."""
    root = tmp_path_factory.mktemp("interrupt-images")
    samples.make_images(root, IMAGES, seed=5, sizes=((160, 120), (120, 160)), png_every=0, broken=False)
    return root


class Job:
    """A `pipeline run` subprocess whose stderr (JSON lines) is read as it comes."""

    def __init__(self, config_path: Path) -> None:
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its own process group, with its embedded Ray cluster's processes
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def events(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def wait_for(self, event: str, timeout: float = 300.0, **fields: object) -> None:
        """Until the run logs ``event`` with ``fields`` (it must still be running)."""
        deadline = time.monotonic() + timeout
        while not any(
            e.get("event") == event and all(e.get(k) == v for k, v in fields.items()) for e in self.events()
        ):
            assert self.process.poll() is None, f"the run ended first:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"no {event} {fields} after {timeout}s"
            time.sleep(0.1)

    def stderr(self) -> str:
        self._reader.join(timeout=30)
        return "".join(self.lines)


@pytest.fixture
def start_job():
    """Start `pipeline run` jobs; one still running at teardown (a failed test) is killed with its group."""
    jobs: list[Job] = []

    def start(config_path: Path) -> Job:
        jobs.append(Job(config_path))
        return jobs[-1]

    yield start
    for job in jobs:
        if job.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait(timeout=60)


def _config_file(make_config, images: Path, tmp_path: Path, **overrides: object) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(make_config(images, **{**PACE, **overrides})), encoding="utf-8")
    return path


def _summary(out: Path) -> dict:
    summaries = [json.loads(path.read_text()) for path in sorted(out.glob("_summary-*.json"))]
    assert len(summaries) == 1, summaries
    return summaries[0]


def _signal_and_wait(job: Job, signum: int, *, group: bool = False) -> float:
    """Send ``signum`` to the driver (as Kubernetes signals a container's process), or to its whole
    process group; seconds to exit."""
    signalled = time.monotonic()
    if group:
        os.killpg(job.process.pid, signum)
    else:
        job.process.send_signal(signum)
    job.process.wait(timeout=GRACE_S + 120)
    return time.monotonic() - signalled


@pytest.mark.parametrize(
    ("signum", "exit_code", "rows_per_file"),
    [
        (signal.SIGTERM, 143, None),  # parts sized by the plan: nothing written before the stop
        (signal.SIGINT, 130, 24),  # small parts: some are written before the stop
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_drains_the_batches_in_flight_and_the_rerun_does_only_the_rest(
    signum, exit_code, rows_per_file, make_config, images, tmp_path, reliability, start_job
):
    """The stop writes what the actors finished, exits 143/130 in the grace; the rerun redoes <= a batch."""
    config_path = _config_file(make_config, images, tmp_path, output__rows_per_file=rows_per_file)
    out = tmp_path / "out"
    first = start_job(config_path)
    first.wait_for("phase", phase="writing")  # the first rows landed: work is in flight
    if rows_per_file:
        deadline = time.monotonic() + 300
        while not whole_parts(out):
            assert first.process.poll() is None, first.stderr()[-3000:]
            assert time.monotonic() < deadline, "no part was written"
            time.sleep(0.1)
    before = whole_parts(out)

    seconds = _signal_and_wait(first, signum)
    stderr = first.stderr()
    assert first.process.returncode == exit_code, stderr[-3000:]
    assert seconds < GRACE_S + EXIT_SLACK_S, f"exited {seconds:.1f}s after the signal"
    assert "Traceback" not in stderr, stderr[-3000:]
    summary = _summary(out)
    assert (summary["status"], summary["phase"]) == ("interrupted", "stopping"), summary
    assert summary["error"] == f"interrupted by {signal.Signals(signum).name}"
    kept, after = summary["processed_this_run"], whole_parts(out)
    assert kept > 0, "a stop during the write keeps what the actors finished"
    assert kept == sum(after.values())  # the summary's count is the rows in the parts
    assert sorted(after) == sorted(p.name for p in out.glob("data/*.parquet"))  # every part is whole
    assert before.items() <= after.items()  # parts written before the signal are untouched
    assert not list((out / "_checkpoint").rglob("*.pending.parquet")), "a part was left half written"
    assert 0 <= summary["unwritten_rows"] <= BATCH  # one actor: at most one batch to redo

    second = subprocess.run(first.process.args, capture_output=True, text=True, timeout=600, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    committed = json.loads((out / "_SUCCESS").read_text())
    assert committed["resumed"] is True
    assert committed["processed_this_run"] == IMAGES - kept  # nothing written is done again
    ids = pq.read_table(out / "data", columns=["row_id"]).column("row_id").to_pylist()
    assert len(ids) == len(set(ids)) == committed["counts"]["inputs"] == IMAGES
    reliability.append(
        {
            "scenario": f"{signal.Signals(signum).name} during the write, then rerun",
            "faults": 1,
            "inputs": IMAGES,
            "rows_lost": IMAGES - len(set(ids)),
            "rows_duplicated": len(ids) - len(set(ids)),
        }
    )


def test_a_stop_whose_grace_runs_out_exits_anyway(make_config, images, tmp_path, start_job):
    """Batches in flight longer than resources.stop_grace_s: the run exits 143 at the grace, interrupted."""
    grace = 0.5
    # One model call at a time (max_actors set: one call per actor), of 64 images at 384 px on one
    # thread (~7 s on a 2-core Xeon): when the first lands, the second has seconds to go, far longer
    # than the grace even after the poll that sees the first rows and the signal's own delay (at
    # 224 px a call took ~2.5 s, and a CI run once saw the write drain inside the grace).
    config_path = _config_file(
        make_config,
        images,
        tmp_path,
        inference__batch_size=64,
        preprocess__resize_size=384,
        preprocess__crop_size=384,
        resources__max_actors=1,
        resources__stop_grace_s=grace,
    )
    job = start_job(config_path)
    job.wait_for("phase", phase="writing")
    seconds = _signal_and_wait(job, signal.SIGTERM)
    stderr = job.stderr()
    assert job.process.returncode == 143, stderr[-3000:]
    assert seconds < grace + EXIT_SLACK_S, f"exited {seconds:.1f}s after the signal"
    assert "resources.stop_grace_s ran out before the write drained" in stderr
    summary = _summary(tmp_path / "out")
    assert (summary["status"], summary["phase"]) == ("interrupted", "stopping")


def test_a_sigterm_to_the_whole_process_group_still_exits_within_the_grace(
    make_config, images, tmp_path, start_job
):
    """SIGTERM to the process group also stops the embedded Ray: no hang, exit 143 at the grace, a summary."""
    grace = 5.0
    config_path = _config_file(make_config, images, tmp_path, resources__stop_grace_s=grace)
    job = start_job(config_path)
    job.wait_for("phase", phase="writing")
    seconds = _signal_and_wait(job, signal.SIGTERM, group=True)
    stderr = job.stderr()
    assert job.process.returncode == 143, stderr[-3000:]
    assert seconds < grace + EXIT_SLACK_S, f"exited {seconds:.1f}s after the signal"
    summary = _summary(tmp_path / "out")
    assert (summary["status"], summary["phase"]) == ("interrupted", "stopping")
