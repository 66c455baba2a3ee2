"""The one metrics module: worker-side Ray metrics and driver-side job metrics.

Worker side (decode tasks, inference actors) uses ``ray.util.metrics``; Ray's
per-node metrics endpoint exports them with a ``ray_`` prefix (counters get
``_total``), e.g. ``ray_pipeline_rows_total``. Driver side uses
``prometheus_client`` with an injected registry, pushed to a Pushgateway while
the job runs and once at the end, success or failure, grouped by
``pipeline=<job.name>`` so "no successful run in 26 h" can alert.

Labels are bounded: pipeline name, run id, stage, outcome, reason. Never a
per-image id.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import pushadd_to_gateway

if TYPE_CHECKING:
    from ray.util.metrics import Counter, Histogram
    from ray.util.metrics import Gauge as RayGauge

PUSH_JOB_NAME = "batch-inference"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

STAGE_FETCH = "fetch"
STAGE_DECODE = "decode"
STAGE_INFERENCE = "inference"
STAGE_WRITE = "write"


@dataclass(frozen=True)
class WorkerMetrics:
    """Ray metrics recorded inside tasks and actors; build with :func:`worker_metrics`."""

    tags: dict[str, str]
    rows: Counter
    failures: Counter
    stage_seconds: Histogram
    batch_size: Histogram
    model_load_seconds: RayGauge
    gpu_utilization: RayGauge
    gpu_memory_used: RayGauge

    def count_rows(self, stage: str, ok: int, failed_by_reason: Mapping[str, int]) -> None:
        """Add one batch's outcome counts for a stage."""
        if ok:
            self.rows.inc(ok, tags={"stage": stage, "outcome": "ok"})
        for reason, count in failed_by_reason.items():
            self.rows.inc(count, tags={"stage": stage, "outcome": "failed"})
            self.failures.inc(count, tags={"stage": stage, "reason": reason})

    def observe_batch(self, stage: str, seconds: float, size: int) -> None:
        """Record one batch's latency and size for a stage."""
        self.stage_seconds.observe(seconds, tags={"stage": stage})
        self.batch_size.observe(size, tags={"stage": stage})


@functools.cache
def worker_metrics(pipeline: str, run_id: str) -> WorkerMetrics:
    """Create (once per worker process) the Ray metrics with the job's default tags."""
    from ray.util.metrics import Counter, Histogram
    from ray.util.metrics import Gauge as RayGauge

    tags = {"pipeline": pipeline, "run_id": run_id}
    keys = ("pipeline", "run_id")

    def with_defaults(metric: Any) -> Any:
        metric.set_default_tags(tags)
        return metric

    return WorkerMetrics(
        tags=tags,
        rows=with_defaults(
            Counter("pipeline_rows", "Rows leaving a stage, by outcome.", (*keys, "stage", "outcome"))
        ),
        failures=with_defaults(
            Counter("pipeline_failures", "Rows that failed, by stage and reason.", (*keys, "stage", "reason"))
        ),
        stage_seconds=with_defaults(
            Histogram(
                "pipeline_stage_batch_seconds",
                "Seconds to process one batch in a stage.",
                list(LATENCY_BUCKETS),
                (*keys, "stage"),
            )
        ),
        batch_size=with_defaults(
            Histogram(
                "pipeline_batch_size",
                "Rows per batch processed by a stage.",
                list(BATCH_SIZE_BUCKETS),
                (*keys, "stage"),
            )
        ),
        model_load_seconds=with_defaults(
            RayGauge("pipeline_model_load_seconds", "Seconds an inference actor took to load its model.", keys)
        ),
        gpu_utilization=with_defaults(
            RayGauge("pipeline_gpu_utilization_ratio", "GPU busy fraction seen by an actor (0-1).", keys)
        ),
        gpu_memory_used=with_defaults(
            RayGauge("pipeline_gpu_memory_used_bytes", "GPU memory allocated by an actor.", keys)
        ),
    )


@dataclass
class JobMetrics:
    """Driver-side job metrics in their own registry, pushed to a Pushgateway if configured."""

    pipeline: str
    run_id: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    success_registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    pushgateway_url: str | None = None
    push_interval_s: float = 15.0
    _last_push: float = 0.0

    def __post_init__(self) -> None:
        labels = ("run_id",)
        reg = self.registry
        self.info = Gauge("pipeline_job_info", "Run identity; value is always 1.", (*labels, "model", "version"), registry=reg)
        self.status = Gauge("pipeline_job_status", "1 for the job's current status.", (*labels, "status"), registry=reg)
        self.rows = Gauge("pipeline_job_rows", "Rows of the run by outcome (input, ok, failed).", (*labels, "outcome"), registry=reg)
        self.failed = Gauge("pipeline_job_failed_rows", "Failed rows of the run by reason.", (*labels, "reason"), registry=reg)
        self.done = Gauge("pipeline_job_progress_rows_done", "Rows finished so far (all outcomes).", labels, registry=reg)
        self.total = Gauge("pipeline_job_progress_rows_total", "Rows this run has to finish.", labels, registry=reg)
        self.eta = Gauge("pipeline_job_eta_seconds", "Estimated seconds to finish at the current rate.", labels, registry=reg)
        self.throughput = Gauge("pipeline_job_throughput_images_per_second", "Images per second so far.", labels, registry=reg)
        self.started = Gauge("pipeline_job_start_timestamp_seconds", "Unix time the run started.", labels, registry=reg)
        self.duration = Gauge("pipeline_job_duration_seconds", "Seconds the run took (so far while running).", labels, registry=reg)
        self.last_success = Gauge(
            "pipeline_job_last_success_timestamp_seconds",
            "Unix time of the last committed run.",
            registry=self.success_registry,  # pushed only on success: a failure keeps the old value
        )

    def set_status(self, status: str) -> None:
        """Mark one of running/succeeded/failed as current."""
        for name in ("running", "succeeded", "failed"):
            self.status.labels(self.run_id, name).set(1 if name == status else 0)

    def start(self, model: str, version: str, total: int) -> None:
        """Record the run's identity and size, and push."""
        self.info.labels(self.run_id, model, version).set(1)
        self.started.labels(self.run_id).set(time.time())
        self.total.labels(self.run_id).set(total)
        self.done.labels(self.run_id).set(0)
        self.set_status("running")
        self.push(force=True)

    def progress(self, done: int, total: int, rate: float, elapsed: float) -> None:
        """Update progress gauges; push at most every ``push_interval_s``."""
        self.done.labels(self.run_id).set(done)
        self.total.labels(self.run_id).set(total)
        self.throughput.labels(self.run_id).set(rate)
        self.eta.labels(self.run_id).set((total - done) / rate if rate > 0 else -1)
        self.duration.labels(self.run_id).set(elapsed)
        self.push()

    def finish(self, *, succeeded: bool, inputs: int, ok: int, failed_by_reason: Mapping[str, int], seconds: float) -> None:
        """Record the final outcome and push it (last success only when committed)."""
        self.rows.labels(self.run_id, "input").set(inputs)
        self.rows.labels(self.run_id, "ok").set(ok)
        self.rows.labels(self.run_id, "failed").set(sum(failed_by_reason.values()))
        for reason, count in failed_by_reason.items():
            self.failed.labels(self.run_id, reason).set(count)
        self.duration.labels(self.run_id).set(seconds)
        self.done.labels(self.run_id).set(ok + sum(failed_by_reason.values()))
        self.eta.labels(self.run_id).set(0)
        self.set_status("succeeded" if succeeded else "failed")
        if succeeded:
            self.last_success.set(time.time())
        self.push(force=True, include_last_success=succeeded)

    def push(self, *, force: bool = False, include_last_success: bool = False) -> None:
        """POST (push-add) to the Pushgateway, so metrics not sent keep their old value."""
        if not self.pushgateway_url:
            return
        now = time.monotonic()
        if not force and now - self._last_push < self.push_interval_s:
            return
        self._last_push = now
        grouping = {"pipeline": self.pipeline}
        pushadd_to_gateway(self.pushgateway_url, job=PUSH_JOB_NAME, registry=self.registry, grouping_key=grouping, timeout=10)
        if include_last_success:
            pushadd_to_gateway(
                self.pushgateway_url,
                job=PUSH_JOB_NAME,
                registry=self.success_registry,
                grouping_key=grouping,
                timeout=10,
            )
