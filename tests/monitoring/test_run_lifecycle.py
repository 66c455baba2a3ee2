"""A run's life as on-call sees it: the status pushed, the summary written, the exit code.

Once the config is valid, every failure pushes status ``failed`` and writes a run summary
(where the job holds the output); ``succeeded`` is pushed only after the manifest is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from monitoring_parts import http_get
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import dump_yaml
from pipeline.errors import ModelError, StorageError
from pipeline.outputs import run_output
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow


def _summary(out: Path) -> dict:
    (path,) = out.glob("_summary-*.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _status(registry: CollectorRegistry, run_id: str) -> dict[str, float | None]:
    return {
        status: registry.get_sample_value("pipeline_job_status", {"run_id": run_id, "status": status})
        for status in ("running", "succeeded", "failed")
    }


def test_a_failed_commit_is_reported_failed_never_succeeded(
    ray_session, sample_images, make_config, monkeypatch, tmp_path
):
    """The manifest write fails: status failed, no last-success, a summary saying why."""

    def no_space(*_args: object, **_kwargs: object) -> None:
        raise StorageError("cannot write _SUCCESS: [Errno 28] No space left on device")

    monkeypatch.setattr(run_output, "commit", no_space)  # the name RunOutput.commit calls
    registry = CollectorRegistry()
    with pytest.raises(StorageError, match="No space left"):
        run_job(make_config(sample_images), registry=registry)
    summary = _summary(tmp_path / "out")
    assert summary["status"] == "failed"
    assert "No space left" in summary["error"]
    assert _status(registry, summary["run_id"]) == {"running": 0, "succeeded": 0, "failed": 1}


def test_a_failure_before_ray_starts_is_pushed_and_summarised(sample_images, make_config, tmp_path):
    """Weights that fail their checksum (found after the config is valid): failed pushed, summary written."""
    config = make_config(sample_images, model__sha256="ab" * 32)
    registry = CollectorRegistry()
    with pytest.raises(ModelError, match="sha256"):
        run_job(config, registry=registry)
    summary = _summary(tmp_path / "out")
    assert summary["status"] == "failed"
    assert "sha256" in summary["error"]
    assert _status(registry, summary["run_id"]) == {"running": 0, "succeeded": 0, "failed": 1}


def test_an_unreachable_cluster_fails_within_its_timeout_with_exit_6(
    pushgateway, sample_images, make_config, tmp_path
):
    """resources.ray_address nobody answers: exit 6 within the connect timeout, naming the address;
    the Pushgateway holds status failed and the output a summary."""
    config = make_config(
        sample_images,
        **{
            "resources.ray_address": "127.0.0.1:9",
            "resources.connect_timeout_s": 3,
            "metrics.pushgateway_url": pushgateway,
            "job.name": "unreachable",
        },
    )
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(config), encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 6, result.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "127.0.0.1:9" in result.stderr
    assert "resources.connect_timeout_s" in result.stderr
    assert "Traceback" not in result.stderr
    summary = _summary(tmp_path / "out")
    assert summary["status"] == "failed"
    assert "127.0.0.1:9" in summary["error"]
    pushed = {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(http_get(f"{pushgateway}/metrics").decode())
        for sample in family.samples
        if sample.name == "pipeline_job_status" and sample.labels.get("pipeline") == "unreachable"
    }
    assert pushed == {"running": 0.0, "succeeded": 0.0, "failed": 1.0}
