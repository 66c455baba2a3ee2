"""The one metrics module: worker-side Ray metrics and driver-side job metrics.

Worker side (decode tasks, inference actors) uses ``ray.util.metrics``; Ray's
per-node metrics endpoint exports them with a ``ray_`` prefix, counters with a
``_total`` suffix (``pipeline_rows`` -> ``ray_pipeline_rows_total``), and adds its
own labels (``SessionName``, ``NodeAddress``, ``WorkerId``, ...). The driver
also records one Ray gauge, ``pipeline_run_info``, so a dashboard can find the
Ray session (and with it Ray's and Ray Data's own metrics) of a run.

Driver side uses ``prometheus_client`` with an injected registry, pushed
(push-add) to a Pushgateway when the run starts, every ``push_interval_s``
while it runs, and once at the end, success or failure, under
``job="batch-inference"`` grouped by ``pipeline=<job.name>`` so "no successful
run in 26 h" can alert. A Pushgateway that cannot be reached never fails the job.

Labels are bounded: pipeline name, run id, stage, outcome, reason. Never a
per-image id. docs/observability.md lists every metric.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import default_handler, pushadd_to_gateway

from pipeline.schema import FailureReason

if TYPE_CHECKING:
    from ray.util.metrics import Counter, Histogram
    from ray.util.metrics import Gauge as RayGauge

    from pipeline.ops.push_auth import Handler

PUSH_JOB_NAME = "batch-inference"
PUSH_TIMEOUT_S = 5.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
ETA_UNKNOWN = -1.0

STAGE_DECODE = "decode"
STAGE_INFERENCE = "inference"
# Per model: a single-model run's inference rows, latency and batch sizes are labelled
# model=<its name>; a models: run's are stage="model", model=<its output name>, and the actor's
# whole call (every model) stays stage="inference" with no model, one count per input.
STAGE_MODEL = "model"

# The driver's named phases, the values of pipeline_job_phase's ``phase`` label, in the order a
# run passes them (restoring_checkpoint comes before waiting_for_gpu_workers, so the GPU pods
# scale up while the checkpoint is read, and a run with nothing left to do waits for none).
# Alerts select on these values: renaming one breaks them.
#: The kinds of pipeline_job_incremental_rows: an incremental run's counts (pipeline.outputs.carry).
INCREMENTAL_KINDS = ("carried", "computed", "retried", "dropped")

JOB_PHASES = (
    "listing_inputs",
    "loading_model",
    "starting_ray",
    "restoring_checkpoint",
    "waiting_for_gpu_workers",
    "starting_workers",
    "writing",
    "verifying",
    "committing",
    "stopping",
)


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

    def count_rows(self, stage: str, ok: int, failed: int, model: str = "") -> None:
        """Add one batch's rows leaving ``stage`` by outcome (``model``: a models: run's model; "" none).

        ``failed`` includes rows that failed upstream and pass through; they are counted
        as failures only once, by :meth:`count_failures` where they failed.
        """
        if ok > 0:
            self.rows.inc(ok, tags={"stage": stage, "outcome": "ok", "model": model})
        if failed > 0:
            self.rows.inc(failed, tags={"stage": stage, "outcome": "failed", "model": model})

    def count_failures(self, stage: str, by_reason: Mapping[str, int]) -> None:
        """Add the rows that failed in ``stage`` (where the failure happened), by reason.

        Decoding counts as ``decode`` wherever it runs: on a CPU worker, or in the
        inference actor with ``preprocess.decode_device: gpu``.
        """
        for reason, count in by_reason.items():
            if count > 0:
                self.failures.inc(count, tags={"stage": stage, "reason": str(reason)})

    def observe_batch(self, stage: str, seconds: float, size: int, model: str = "") -> None:
        """Record one batch's latency and size (rows the stage worked on) for a stage (and model)."""
        self.stage_seconds.observe(seconds, tags={"stage": stage, "model": model})
        self.batch_size.observe(size, tags={"stage": stage, "model": model})

    def observe_gpu(self, utilization: float | None, memory_used_bytes: int | None) -> None:
        """Record the GPU busy fraction (0-1) and bytes in use; an unknown figure is not exported."""
        if utilization is not None:
            self.gpu_utilization.set(utilization)
        if memory_used_bytes is not None:
            self.gpu_memory_used.set(memory_used_bytes)


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
            Counter(
                "pipeline_rows",
                "Rows leaving a stage, by outcome (and model, on the inference and model stages).",
                (*keys, "stage", "outcome", "model"),
            )
        ),
        failures=with_defaults(
            Counter(
                "pipeline_failures",
                "Rows that failed, by the stage that failed them and the reason.",
                (*keys, "stage", "reason"),
            )
        ),
        stage_seconds=with_defaults(
            Histogram(
                "pipeline_stage_batch_seconds",
                "Seconds to process one batch in a stage.",
                list(LATENCY_BUCKETS),
                (*keys, "stage", "model"),
            )
        ),
        batch_size=with_defaults(
            Histogram(
                "pipeline_batch_size_rows",
                "Rows per batch a stage worked on (inference: images through the model).",
                list(BATCH_SIZE_BUCKETS),
                (*keys, "stage", "model"),
            )
        ),
        model_load_seconds=with_defaults(
            RayGauge(
                "pipeline_model_load_seconds", "Seconds an inference actor took to load its model.", keys
            )
        ),
        gpu_utilization=with_defaults(
            RayGauge(
                "pipeline_gpu_utilization_ratio",
                "Busy fraction (0-1) of an actor's GPU from NVML; absent where NVML cannot tell.",
                keys,
            )
        ),
        gpu_memory_used=with_defaults(
            RayGauge(
                "pipeline_gpu_memory_used_bytes", "Bytes in use on an actor's GPU (NVML, else CUDA).", keys
            )
        ),
    )


@functools.cache
def _ray_run_info(pipeline: str, run_id: str) -> RayGauge:
    from ray.util.metrics import Gauge as RayGauge

    gauge = RayGauge(
        "pipeline_run_info",
        "1 while a run's driver is connected to this Ray cluster; joins a run to the Ray session.",
        ("pipeline", "run_id"),
    )
    gauge.set_default_tags({"pipeline": pipeline, "run_id": run_id})
    return gauge


def _ray_connected() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover  # ray is a dependency; keep the driver metrics usable
        return False
    return bool(ray.is_initialized())


@dataclass
class JobMetrics:
    """Driver-side job metrics in their own registry, pushed to a Pushgateway if configured."""

    pipeline: str
    run_id: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    success_registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    pushgateway_url: str | None = None
    push_interval_s: float = 15.0
    push_handler: Handler | None = None  # adds the Pushgateway's credentials (pipeline.ops.push_auth)
    push_failures: int = 0
    _last_push: float = 0.0
    _done: int = 0
    _ray_info_failed: bool = False
    _phase: str | None = None

    def __post_init__(self) -> None:
        labels = ("run_id",)
        reg = self.registry
        self.info = Gauge(
            "pipeline_job_info",
            "Run identity; value is always 1.",
            (*labels, "model", "version"),
            registry=reg,
        )
        self.status = Gauge(
            "pipeline_job_status",
            "1 for the run's current status, 0 for the others.",
            (*labels, "status"),
            registry=reg,
        )
        self.rows = Gauge(
            "pipeline_job_rows",
            "Rows of the run by outcome (input, ok, failed).",
            (*labels, "outcome"),
            registry=reg,
        )
        self.decoded = Gauge(
            "pipeline_job_decoded_rows",
            "Inputs the decode stage read this attempt: one per input, however many models run on it.",
            labels,
            registry=reg,
        )
        self.incremental = Gauge(
            "pipeline_job_incremental_rows",
            "A run's rows by kind (carried, computed, retried, dropped); a full run computes them all.",
            (*labels, "kind"),
            registry=reg,
        )
        self.failed = Gauge(
            "pipeline_job_failed_rows", "Failed rows of the run by reason.", (*labels, "reason"), registry=reg
        )
        self.done = Gauge(
            "pipeline_job_progress_rows_done", "Rows finished so far (all outcomes).", labels, registry=reg
        )
        self.total = Gauge(
            "pipeline_job_progress_rows_expected", "Rows this run has to finish.", labels, registry=reg
        )
        self.eta = Gauge(
            "pipeline_job_eta_seconds",
            "Estimated seconds to finish at the current rate (-1: unknown).",
            labels,
            registry=reg,
        )
        self.throughput = Gauge(
            "pipeline_job_throughput_images_per_second",
            "Rows finished per second since the start.",
            labels,
            registry=reg,
        )
        self.started = Gauge(
            "pipeline_job_start_timestamp_seconds", "Unix time the run started.", labels, registry=reg
        )
        self.duration = Gauge(
            "pipeline_job_duration_seconds",
            "Seconds the run took (so far, while running).",
            labels,
            registry=reg,
        )
        self.phase = Gauge(
            "pipeline_job_phase",
            "1 for the run's current phase (JOB_PHASES), 0 for the others.",
            (*labels, "phase"),
            registry=reg,
        )
        self.storage_retries = Gauge(
            "pipeline_job_storage_retries",
            "S3 requests the run sent again (throttling, 5xx, timeouts, resets), driver and tasks.",
            labels,
            registry=reg,
        )
        self.last_success = Gauge(
            "pipeline_job_last_success_timestamp_seconds",
            "Unix time the last committed run finished.",
            registry=self.success_registry,  # pushed only on success: a failure keeps the old value
        )

    def set_incremental(self, counts: Mapping[str, Any]) -> None:
        """The run's counts by kind (the summary's ``incremental``; a kind not given: 0), pushed at end."""
        for kind in INCREMENTAL_KINDS:
            self.incremental.labels(self.run_id, kind).set(counts.get(kind, 0))

    def set_decoded(self, count: int) -> None:
        """The inputs this attempt decoded (pushed with the run's end)."""
        self.decoded.labels(self.run_id).set(count)

    def set_status(self, status: str) -> None:
        """Mark one of running/succeeded/failed as current."""
        for name in ("running", "succeeded", "failed"):
            self.status.labels(self.run_id, name).set(1 if name == status else 0)

    def set_phase(self, phase: str) -> None:
        """Mark one of :data:`JOB_PHASES` as current, and push at once: alerts wait on phases."""
        self._phase = phase
        self._mark_phase()
        self.push(force=True)

    def _mark_phase(self) -> None:
        for name in JOB_PHASES:
            self.phase.labels(self.run_id, name).set(1 if name == self._phase else 0)

    def start(self, model: str, version: str, total: int) -> None:
        """Record the run's identity and size, and push."""
        self.info.labels(self.run_id, model, version).set(1)
        self.started.labels(self.run_id).set(time.time())
        # Push-add replaces a metric only when the push has samples of it: give every family a
        # sample of this run, so the previous run's series leave the Pushgateway now.
        self.rows.labels(self.run_id, "input").set(total)
        self.rows.labels(self.run_id, "ok").set(0)
        self.rows.labels(self.run_id, "failed").set(0)
        for reason in FailureReason:
            self.failed.labels(self.run_id, str(reason)).set(0)
        self.total.labels(self.run_id).set(total)
        self.done.labels(self.run_id).set(0)
        self.eta.labels(self.run_id).set(ETA_UNKNOWN)
        self.throughput.labels(self.run_id).set(0)
        self.duration.labels(self.run_id).set(0)
        self._mark_phase()
        self.storage_retries.labels(self.run_id).set(0)
        self.set_status("running")
        self.push(force=True)

    def progress(self, done: int, total: int, rate: float, elapsed: float) -> None:
        """Update progress gauges; push at most every ``push_interval_s``."""
        self._mark_ray_session()
        self._done = done
        self.done.labels(self.run_id).set(done)
        self.total.labels(self.run_id).set(total)
        self.throughput.labels(self.run_id).set(rate)
        self.eta.labels(self.run_id).set(max(0.0, total - done) / rate if rate > 0 else ETA_UNKNOWN)
        self.duration.labels(self.run_id).set(elapsed)
        self.push()

    def finish(
        self,
        *,
        succeeded: bool,
        inputs: int,
        ok: int,
        failed_by_reason: Mapping[str, int],
        seconds: float,
        storage_retries: int = 0,
    ) -> None:
        """Record the final outcome and push it (last success only when committed)."""
        self._mark_ray_session()
        self.storage_retries.labels(self.run_id).set(storage_retries)
        failed = sum(failed_by_reason.values())
        self.rows.labels(self.run_id, "input").set(inputs)
        self.rows.labels(self.run_id, "ok").set(ok)
        self.rows.labels(self.run_id, "failed").set(failed)
        for reason, count in failed_by_reason.items():
            self.failed.labels(self.run_id, reason).set(count)
        self.duration.labels(self.run_id).set(seconds)
        # A run that failed before its output was tallied keeps the last progress seen.
        self._done = max(self._done, ok + failed)
        self.done.labels(self.run_id).set(self._done)
        self.eta.labels(self.run_id).set(0 if succeeded else ETA_UNKNOWN)
        if seconds > 0 and math.isfinite(seconds):
            self.throughput.labels(self.run_id).set(self._done / seconds)
        self.set_status("succeeded" if succeeded else "failed")
        if succeeded:
            self.last_success.set(time.time())
        self.push(force=True, include_last_success=succeeded)

    def push(self, *, force: bool = False, include_last_success: bool = False) -> None:
        """POST (push-add) to the Pushgateway, so metrics not sent keep their old value.

        A failed push (unreachable, or refused: 401 without the right credentials) is logged
        (first failure, then every tenth) and counted in ``push_failures``; it never fails the job.
        """
        if not self.pushgateway_url:
            return
        now = time.monotonic()
        if not force and now - self._last_push < self.push_interval_s:
            return
        self._last_push = now
        grouping = {"pipeline": self.pipeline}
        registries = [self.registry, self.success_registry] if include_last_success else [self.registry]
        try:
            for registry in registries:
                pushadd_to_gateway(
                    self.pushgateway_url,
                    job=PUSH_JOB_NAME,
                    registry=registry,
                    grouping_key=grouping,
                    timeout=PUSH_TIMEOUT_S,
                    handler=self.push_handler or default_handler,
                )
        except OSError as exc:  # URLError, HTTPError, timeouts, refused connections
            self.push_failures += 1
            if self.push_failures % 10 == 1:
                from pipeline.ops.logs import get_logger

                get_logger(run_id=self.run_id, stage="metrics").warning(
                    "pushgateway push failed",
                    pushgateway=self.pushgateway_url,
                    error=f"{type(exc).__name__}: {exc}",
                    failures=self.push_failures,
                )

    def _mark_ray_session(self) -> None:
        """Export ``ray_pipeline_run_info`` from the driver once Ray is connected (never fails the job)."""
        if self._ray_info_failed or not _ray_connected():
            return
        try:
            _ray_run_info(self.pipeline, self.run_id).set(1)
        except Exception as exc:  # e.g. a Ray client connection without a metrics agent
            self._ray_info_failed = True
            from pipeline.ops.logs import get_logger

            get_logger(run_id=self.run_id, stage="metrics").warning(
                "ray_pipeline_run_info not exported", error=f"{type(exc).__name__}: {exc}"
            )


@dataclass(frozen=True)
class RunLabels:
    """The labels every worker metric and output row carries."""

    pipeline: str
    run_id: str
