"""Reruns a scheduler can trust: a committed output is left alone; the exit code agrees with the summary.

RayJob and Argo retries resubmit the same command. A rerun of an output committed with the
same configuration exits 0 and writes nothing there; ``--strict``, or another configuration,
exits 3 and writes nothing either. A SIGTERM that reaches the driver after ``_SUCCESS`` (here:
while it pushes its final status, held open by the test's Pushgateway until the signal is
sent) changes nothing: the run succeeded and exits 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import pipeline
from pipeline.cli import samples
from pipeline.config import dump_yaml
from pipeline.errors import RunInterrupted
from pipeline.outputs.layout import MANIFEST, OutputLocation
from pipeline.outputs.run_output import RunOutput
from pipeline.run.job import _Run
from pipeline.run.summary import RunSummary

ROOT = Path(pipeline.__file__).parents[1]


def final_push(status: str) -> re.Pattern[bytes]:
    """A run's final push: its status gauge says ``status`` (succeeded or failed)."""
    return re.compile(rb'pipeline_job_status\{[^}]*status="' + status.encode() + rb'"[^}]*\} 1\.0')


class SignallingGateway:
    """A Pushgateway stand-in that sends SIGTERM to the job when the job pushes its final ``status``.

    It answers that push only after the signal is sent, so the signal reaches the driver
    while it is still finishing the run.
    """

    def __init__(self, status: str = "succeeded") -> None:
        self.job: subprocess.Popen[str] | None = None
        self.signalled = threading.Event()
        final = final_push(status)
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if final.search(body) and gateway.job is not None and not gateway.signalled.is_set():
                    gateway.job.send_signal(signal.SIGTERM)
                    gateway.signalled.set()
                    time.sleep(0.5)  # the driver is inside this push when its handler runs
                self.send_response(200)
                self.end_headers()

            do_PUT = do_POST  # noqa: N815

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[SignallingGateway]:
    server = SignallingGateway()
    try:
        yield server
    finally:
        server.close()


def _command(config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "--config", str(config_path), *extra]


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return {**env, "PYTHONPATH": str(ROOT)}


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under the output with its size and modification time (ns)."""
    return {
        str(path.relative_to(out)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in out.rglob("*")
        if path.is_file()
    }


def _rerun(config_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(config_path, *extra), capture_output=True, text=True, env=_env(), timeout=300, check=False
    )


@pytest.mark.slow
def test_signal_after_commit_exits_0_and_reruns_change_nothing(tmp_path, make_config, gateway):
    """SIGTERM after _SUCCESS: exit 0, summary succeeded. Reruns: same config exit 0, --strict
    and another config exit 3, and none of them writes a byte into the committed output."""
    images = tmp_path / "images"
    samples.make_images(images, 6, seed=4, sizes=((64, 48),), png_every=0, broken=False)
    config = make_config(images, metrics__pushgateway_url=gateway.url, metrics__push_interval_s=600)
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(config), encoding="utf-8")
    out = Path(config.output.uri)

    with subprocess.Popen(
        _command(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    ) as first:
        gateway.job = first
        stdout, stderr = first.communicate(timeout=300)
    assert gateway.signalled.is_set(), "the job never pushed a succeeded status"
    assert first.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "SIGTERM came after the commit: the run succeeded, exit 0" in stderr
    [summary] = [json.loads(p.read_text()) for p in out.glob("_summary-*.json")]
    assert summary["status"] == "succeeded"
    manifest = json.loads((out / MANIFEST).read_text())
    assert summary["run_id"] == manifest["run_id"]
    assert f"run {manifest['run_id']}: succeeded" in stdout

    before = _snapshot(out)
    again = _rerun(path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        f"run {manifest['run_id']}: already_committed with this configuration: nothing to do" in again.stdout
    )
    assert "  inputs     6" in again.stdout
    assert _snapshot(out) == before  # no _summary-*.json, no lease file, nothing touched

    strict = _rerun(path, "--strict")
    assert strict.returncode == 3, strict.stderr[-3000:]
    assert "with this configuration; --strict" in strict.stderr
    changed = path.with_name("other.yaml")
    changed.write_text(dump_yaml(make_config(images, model__top_k=3)), encoding="utf-8")
    other = _rerun(changed)
    assert other.returncode == 3, other.stderr[-3000:]
    assert "with a different configuration" in other.stderr
    assert "Traceback" not in strict.stderr + other.stderr
    assert _snapshot(out) == before


@pytest.mark.slow
def test_a_signal_while_a_failed_run_reports_keeps_its_exit_code(tmp_path, make_config):
    """SIGTERM while a run that failed (exit 5) pushes its status: still exit 5, summary failed."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for index in range(5):
        (bad / f"{index}.jpg").write_text("not an image")
    gateway = SignallingGateway("failed")
    try:
        config = make_config(
            bad,
            output__max_failure_fraction=None,
            metrics__pushgateway_url=gateway.url,
            metrics__push_interval_s=600,
        )
        path = tmp_path / "job.yaml"
        path.write_text(dump_yaml(config), encoding="utf-8")
        with subprocess.Popen(
            _command(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        ) as job:
            gateway.job = job
            _, stderr = job.communicate(timeout=300)
    finally:
        gateway.close()
    assert gateway.signalled.is_set(), "the job never pushed a failed status"
    assert job.returncode == 5, stderr[-3000:]
    assert "Traceback" not in stderr
    [summary] = [json.loads(p.read_text()) for p in Path(config.output.uri).glob("_summary-*.json")]
    assert summary["status"] == "failed"
    assert "output.max_failure_fraction" in summary["error"]


def test_a_signal_while_the_manifest_is_read_back_leaves_the_run_succeeded(
    tmp_path, local_config, write_output
):
    """A signal between writing this run's _SUCCESS and marking the summary: the run is told succeeded."""
    out = write_output(tmp_path / "out", [{"row_id": "a", "status": "ok", "top_k_labels": ["cat"]}])
    manifest = json.loads((out / MANIFEST).read_text())
    config = local_config(tmp_path, out)
    run = _Run(config, None, RunSummary(run_id=manifest["run_id"], status="failed", output_uri=str(out)))  # type: ignore[arg-type]
    run.output = RunOutput(OutputLocation.open(str(out), config.storage), config)
    assert run.interrupted(RunInterrupted(signal.SIGTERM)) is False
    assert run.summary.status == "succeeded"
    assert run.settled.is_set()

    other = _Run(config, None, RunSummary(run_id="another-run", status="failed", output_uri=str(out)))  # type: ignore[arg-type]
    other.output = run.output
    assert other.interrupted(RunInterrupted(signal.SIGTERM)) is True
    assert other.summary.status == "interrupted"
