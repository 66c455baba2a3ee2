"""SIGINT and SIGTERM stop a real `pipeline run` cleanly: what was written is kept and said.

Kubernetes sends SIGTERM first; a terminal sends SIGINT. Either way the run exits 130 or
143 without a traceback, its summary says ``interrupted`` with the rows it really wrote,
and running the same command again skips them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import samples
from pipeline.config import dump_yaml

pytestmark = pytest.mark.slow
IMAGES = 480  # 4 parts (one per listing block); the signal comes once one is written


def _summary(out: Path) -> dict:
    summaries = [json.loads(path.read_text()) for path in sorted(out.glob("_summary-*.json"))]
    assert len(summaries) == 1, summaries
    return summaries[0]


def _written_parts(out: Path) -> int:
    checkpoints = out / "_checkpoint"
    if not checkpoints.exists():
        return 0
    return len([p for p in checkpoints.rglob("*.parquet") if not p.name.endswith(".pending.parquet")])


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_keeps_its_parts_and_the_rerun_skips_them(
    signum, exit_code, make_config, tmp_path
):
    images = tmp_path / "images"
    samples.make_images(images, IMAGES, seed=5, sizes=((160, 120), (120, 160)), png_every=0, broken=False)
    config = make_config(images, output__rows_per_file=16)
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(config), encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline", "run", "--config", str(path)]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while _written_parts(out) < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the run finished before it could be interrupted"
    first.send_signal(signum)  # to the driver only, as Kubernetes signals the container's process
    _, stderr = first.communicate(timeout=180)
    assert "Traceback" not in stderr, stderr[-3000:]
    summary = _summary(out)
    if (out / "_SUCCESS").exists():  # the signal came after the commit (a slow first part): it succeeded
        assert (first.returncode, summary["status"]) == (0, "succeeded"), stderr[-3000:]
        return
    assert first.returncode == exit_code, stderr[-3000:]
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert summary["status"] == "interrupted"
    assert summary["error"] == f"interrupted by {signal.Signals(signum).name}"
    written = summary["processed_this_run"]
    assert 0 <= written <= IMAGES  # what a run still writing had completely written

    second = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    committed = json.loads((out / "_SUCCESS").read_text())
    assert committed["counts"]["inputs"] == IMAGES
    assert committed["resumed"] is (written > 0)
    # Nothing written before was redone (a part in flight may have landed after the count).
    assert committed["processed_this_run"] <= IMAGES - written
