"""A whole job in process, with a fresh metrics registry and JSON logs captured.

One run per module on the shared in-process Ray cluster: the driver's exported job
metrics must equal the run summary, and its log lines must be JSON with the run id,
with the AWS secret of the environment masked even where the job logs it (the output
path contains it on purpose).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from pipeline.cli import samples
from pipeline.config import load_config
from pipeline.ops import logs
from pipeline.ops.redaction import REDACTED
from pipeline.run.job import run_job

if TYPE_CHECKING:
    from pipeline.run.summary import RunSummary

pytestmark = pytest.mark.slow

SECRET = "inProcSecret-5d1e8b2a90"  # noqa: S105  # a fake credential


@dataclass
class InProcessRun:
    """The run's summary, its registry and its log lines."""

    summary: RunSummary
    registry: CollectorRegistry
    log_text: str


@pytest.fixture(scope="module")
def in_process_run(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> InProcessRun:
    """Run the job once with logging.format json, a secret in the environment and a fresh registry."""
    workdir = tmp_path_factory.mktemp("in-process")
    samples.make_images(workdir / "images", 12, seed=7)  # 12 good images, 3 broken files
    config = load_config(
        None,
        [
            f"input.uri={workdir / 'images'}",
            f"output.uri={workdir / f'out-{SECRET}'}",  # logged by the job: must come out masked
            "job.name=in-process",
            "model.name=mobilenet_v3_small",
            "model.random_init=true",
            "inference.precision=fp32",
            "logging.format=json",
            "logging.progress=off",
            "output.max_failure_fraction=1.0",  # the 3 broken files (20%) are counted, not refused
        ],
        environ={},
    )
    buffer = io.StringIO()
    registry = CollectorRegistry()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        logs.configure(config.logging.format, config.logging.level, stream=buffer)
        try:
            summary = run_job(config, registry=registry)
        finally:
            structlog.reset_defaults()
    return InProcessRun(summary, registry, buffer.getvalue())


def value(run: InProcessRun, name: str, **labels: str) -> float | None:
    return run.registry.get_sample_value(name, {"run_id": run.summary.run_id, **labels})


class TestExportedJobMetrics:
    def test_rows_equal_the_summary(self, in_process_run: InProcessRun) -> None:
        """pipeline_job_rows by outcome equals the summary's inputs, succeeded and failed."""
        summary = in_process_run.summary
        assert summary.status == "succeeded"
        assert (summary.inputs, summary.succeeded, summary.failed) == (15, 12, 3)
        assert value(in_process_run, "pipeline_job_rows", outcome="input") == summary.inputs
        assert value(in_process_run, "pipeline_job_rows", outcome="ok") == summary.succeeded
        assert value(in_process_run, "pipeline_job_rows", outcome="failed") == summary.failed

    def test_failures_by_reason_equal_the_summary(self, in_process_run: InProcessRun) -> None:
        """pipeline_job_failed_rows has the summary's count for each reason and 0 for the rest."""
        reasons: dict[str, float] = {}
        for metric in in_process_run.registry.collect():
            if metric.name == "pipeline_job_failed_rows":
                reasons = {s.labels["reason"]: s.value for s in metric.samples if s.value}
        assert reasons == in_process_run.summary.failed_by_reason

    def test_progress_status_and_duration(self, in_process_run: InProcessRun) -> None:
        """Progress is complete, status succeeded, ETA 0, duration the summary's seconds."""
        summary = in_process_run.summary
        assert value(in_process_run, "pipeline_job_progress_rows_done") == summary.inputs
        assert value(in_process_run, "pipeline_job_progress_rows_expected") == summary.inputs
        assert value(in_process_run, "pipeline_job_status", status="succeeded") == 1
        assert value(in_process_run, "pipeline_job_status", status="running") == 0
        assert value(in_process_run, "pipeline_job_eta_seconds") == 0
        assert value(in_process_run, "pipeline_job_duration_seconds") == pytest.approx(
            summary.seconds, abs=1.0
        )


class TestProductionLogs:
    def events(self, run: InProcessRun) -> list[dict[str, Any]]:
        return [json.loads(line) for line in run.log_text.splitlines()]

    def test_every_line_is_json_with_run_id_and_stage(self, in_process_run: InProcessRun) -> None:
        """Every line the job logged is a JSON object carrying the run id and a stage."""
        events = self.events(in_process_run)
        assert {"run starting", "resource plan", "run finished"} <= {e["event"] for e in events}
        for event in events:
            assert event["run_id"] == in_process_run.summary.run_id, event
            assert event["stage"], event

    def test_final_summary_line(self, in_process_run: InProcessRun) -> None:
        """The last line is the run summary: status, counts and failures by reason."""
        final = self.events(in_process_run)[-1]
        summary = in_process_run.summary
        assert final["event"] == "run finished"
        assert (final["status"], final["inputs"], final["succeeded"], final["failed"]) == (
            "succeeded",
            summary.inputs,
            summary.succeeded,
            summary.failed,
        )
        assert final["failed_by_reason"] == summary.failed_by_reason

    def test_secret_never_logged(self, in_process_run: InProcessRun) -> None:
        """The environment's AWS secret is masked in the output path the job logs."""
        assert SECRET not in in_process_run.log_text
        starting = next(e for e in self.events(in_process_run) if e["event"] == "run starting")
        assert Path(starting["output"]).name == f"out-{REDACTED}"
