"""Running one job: check, list, plan, execute, verify, commit, report.

Everything that can be refused is refused before Ray starts: the config, the
output state (committed runs are not redone without ``--overwrite``), the
inputs, and the model weights (checksum and architecture).
"""

from __future__ import annotations

import os
import platform
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa

from pipeline import __version__, output, storage
from pipeline.errors import FailureBudgetExceededError, JobFailedError, PipelineError
from pipeline.logs import get_logger
from pipeline.metrics import JobMetrics
from pipeline.model import ModelSpec, resolve_spec

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from pipeline.config import Config
    from pipeline.graph import ResourcePlan

POLL_INTERVAL_S = 1.0
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")
RETRIED_IO_ERRORS = ("SlowDown", "503", "Service Unavailable", "RequestTimeout", "Connection reset")


@dataclass
class RunSummary:
    """What a run did; printed at the end and written as JSON."""

    run_id: str
    status: str
    output_uri: str
    inputs: int = 0
    succeeded: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    processed_this_run: int = 0
    resumed: bool = False
    seconds: float = 0.0
    images_per_second: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    def render(self) -> str:
        """Human-readable lines for the console."""
        lines = [
            f"run {self.run_id}: {self.status}",
            f"  output     {self.output_uri}",
            f"  inputs     {self.inputs}",
            f"  succeeded  {self.succeeded}",
            f"  failed     {self.failed}",
        ]
        lines += [f"    {reason:<18} {count}" for reason, count in self.failed_by_reason.items()]
        lines += [
            f"  processed  {self.processed_this_run} this run{' (resumed)' if self.resumed else ''}",
            f"  seconds    {self.seconds:.1f}",
            f"  images/s   {self.images_per_second:.1f}",
        ]
        if self.error:
            lines.append(f"  error      {self.error}")
        return "\n".join(lines)


class ProgressTracker:
    """Counts rows finished by the inference actors (a tiny Ray actor, zero CPUs)."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed: dict[str, int] = {}

    def add(self, ok: int, failed: dict[str, int]) -> None:
        """Add one batch's outcome."""
        self.ok += ok
        for reason, count in failed.items():
            self.failed[reason] = self.failed.get(reason, 0) + count

    def get(self) -> tuple[int, dict[str, int]]:
        """Totals so far."""
        return self.ok, dict(self.failed)


class ProgressBar:
    """One redrawn line with count, rate and ETA; only on a terminal."""

    def __init__(self, total: int, stream: IO[str], *, enabled: bool) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled

    def update(self, done: int, rate: float) -> None:
        """Redraw the line."""
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / self.total) if self.total else width
        eta = f"{(self.total - done) / rate:6.0f}s" if rate > 0 else "     ?s"
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} {rate:7.1f} img/s  ETA {eta}")
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()


def versions() -> dict[str, str]:
    """Versions recorded in the manifest."""
    import ray
    import torch
    import torchvision

    return {
        "pipeline": __version__,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pyarrow": pa.__version__,
    }


def _connect_ray(config: Config) -> bool:
    """Join the configured cluster, or start an embedded one; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = config.resources.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        return True
    ray.init(
        object_store_memory=config.resources.object_store_memory_bytes,
        include_dashboard=False,
        logging_level="WARNING",
        configure_logging=False,
    )
    return True


def _configure_data_context(config: Config, location: output.OutputLocation, *, show_progress: bool) -> None:
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    ctx = DataContext.get_current()
    ctx.checkpoint_config = CheckpointConfig(
        id_column="row_id",
        checkpoint_path=location.uri_of(output.CHECKPOINT_DIR),
        delete_checkpoint_on_success=False,
        override_filesystem=storage.arrow_filesystem(location.uri, config.storage),
    )
    ctx.retried_io_errors = list(dict.fromkeys([*ctx.retried_io_errors, *RETRIED_IO_ERRORS]))
    ctx.enable_progress_bars = show_progress
    ctx.print_on_execution_start = show_progress
    ctx.max_errored_blocks = 0  # a lost block would lose rows: fail instead


def _execute(
    dataset: Any,
    location: output.OutputLocation,
    config: Config,
    run_id: str,
    tracker: Any,
    total: int,
    metrics: JobMetrics,
    bar: ProgressBar,
) -> int:
    """Run the write in a thread; poll progress, push metrics, detect stalls."""
    import ray

    from pipeline.graph import PartFilenames

    failure: list[BaseException] = []

    def write() -> None:
        try:
            dataset.write_parquet(
                location.uri_of(output.DATA_DIR),
                filesystem=storage.arrow_filesystem(location.uri, config.storage),
                filename_provider=PartFilenames(run_id),
                min_rows_per_file=config.output.rows_per_file,
            )
        except BaseException as exc:  # noqa: BLE001  # re-raised in the driver thread
            failure.append(exc)

    writer = threading.Thread(target=write, name="ray-data-write", daemon=True)
    started = time.monotonic()
    last_change, last_done = started, -1
    writer.start()
    done = 0
    while writer.is_alive():
        writer.join(POLL_INTERVAL_S)
        ok, failed = ray.get(tracker.get.remote())
        done = ok + sum(failed.values())
        now = time.monotonic()
        if done != last_done:
            last_change, last_done = now, done
        elapsed = now - started
        rate = done / elapsed if elapsed > 0 else 0.0
        metrics.progress(done, total, rate, elapsed)
        bar.update(done, rate)
        if now - last_change > config.resources.stall_timeout_s and writer.is_alive():
            raise JobFailedError(
                f"no progress for {config.resources.stall_timeout_s:.0f}s at {done}/{total} rows "
                "(resources.stall_timeout_s): the cluster cannot schedule a stage or a worker hangs"
            )
    bar.close()
    if failure:
        exc = failure[0]
        raise JobFailedError(f"the Ray Data job failed: {_root_cause(exc)}") from exc
    ok, failed = ray.get(tracker.get.remote())
    return ok + sum(failed.values())


def _root_cause(exc: BaseException) -> str:
    """The last lines of a (possibly remote) traceback: where the cause is named."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION_LINE.match(line) and "UserCodeException" not in line]
    return (named[0] if named else " | ".join(lines[-3:]))[:600] or type(exc).__name__


def run_job(
    config: Config,
    *,
    overwrite: bool = False,
    registry: CollectorRegistry | None = None,
    progress_stream: IO[str] | None = None,
) -> RunSummary:
    """Run the whole job; raise a :class:`PipelineError` on failure (after pushing metrics)."""
    started_wall, started = time.time(), time.monotonic()
    location = output.OutputLocation.open(config.output.uri, config.storage)
    config_hash = config.config_hash()
    state = output.inspect(location)
    resume_id = output.check_can_start(state, config.job.run_id, config_hash, overwrite=overwrite)
    run_id = config.job.run_id or resume_id or new_run_id()
    log = get_logger(run_id=run_id, stage="driver")
    if overwrite and (state.committed or state.started):
        log.warning("overwriting existing output", output=location.uri)
        location.clear()
    resumed = resume_id is not None and location.exists(output.INPUTS)
    uris = location.read_inputs() if resumed else storage.list_inputs(config.input, config.storage).uris
    opts = storage.storage_options(config.storage)
    spec, state_dict = resolve_spec(config.model, config.preprocess, opts if config.storage.endpoint_url else {})
    if spec.random_init:
        log.warning("model has RANDOM weights (model.random_init: true); predictions are meaningless")
    log.info("run starting", inputs=len(uris), output=location.uri, resumed=resumed, model=spec.name)
    if not resumed:
        location.prepare()
        location.write_table(output.INPUTS, pa.table({"row_id": [storage.row_id(u) for u in uris], "uri": uris}))
        location.write_json(output.RUN_STATE, {"run_id": run_id, "config_hash": config_hash, "started_at": started_wall})
    metrics = JobMetrics(
        pipeline=config.job.name,
        run_id=run_id,
        pushgateway_url=config.metrics.pushgateway_url,
        push_interval_s=config.metrics.push_interval_s,
        **({"registry": registry} if registry is not None else {}),
    )
    summary = RunSummary(run_id=run_id, status="failed", output_uri=location.uri, inputs=len(uris), resumed=resumed)
    stream = progress_stream or sys.stderr
    show = config.logging.progress == "on" or (config.logging.progress == "auto" and stream.isatty())
    metrics.start(spec.name, __version__, len(uris))
    started_ray = _connect_ray(config)
    try:
        bar = ProgressBar(len(uris), stream, enabled=show)
        result, plan, summary.processed_this_run = _run_on_ray(config, location, uris, spec, state_dict, run_id, metrics, bar)
        summary.succeeded, summary.failed, summary.failed_by_reason = result.ok, result.failed, result.failed_by_reason
        summary.seconds = time.monotonic() - started
        summary.images_per_second = summary.processed_this_run / summary.seconds if summary.seconds else 0.0
        _commit(config, location, spec, summary, result, plan, config_hash, started_wall)
    except PipelineError as exc:
        summary.error = str(exc)
        raise
    except Exception as exc:
        summary.error = f"{type(exc).__name__}: {exc}"
        raise JobFailedError(summary.error) from exc
    finally:
        summary.seconds = time.monotonic() - started
        metrics.finish(
            succeeded=summary.status == "succeeded",
            inputs=summary.inputs,
            ok=summary.succeeded,
            failed_by_reason=summary.failed_by_reason,
            seconds=summary.seconds,
        )
        location.write_json(f"_summary-{run_id}.json", summary.as_dict())
        log.info("run finished", **{k: v for k, v in summary.as_dict().items() if k != "run_id"})
        if started_ray:
            import ray

            ray.shutdown()
    return summary


def _run_on_ray(
    config: Config,
    location: output.OutputLocation,
    uris: list[str],
    spec: ModelSpec,
    state_dict: Any,
    run_id: str,
    metrics: JobMetrics,
    bar: ProgressBar,
) -> tuple[output.Tally, ResourcePlan, int]:
    """Plan, build and execute the graph, then read the output back."""
    import ray

    from pipeline.graph import build_dataset, plan_resources

    plan: ResourcePlan = plan_resources(config, ray.cluster_resources())
    get_logger(run_id=run_id, stage="driver").info("resource plan", **plan.as_dict())
    _configure_data_context(config, location, show_progress=False)  # our own bar is clearer
    tracker = ray.remote(num_cpus=0)(ProgressTracker).remote()
    state_ref = ray.put(state_dict) if state_dict is not None else None
    dataset = build_dataset(config, uris, spec, state_ref, plan, run_id, progress=tracker)
    processed = _execute(dataset, location, config, run_id, tracker, len(uris), metrics, bar)
    return output.tally(location, config.storage, {storage.row_id(uri) for uri in uris}), plan, processed


def _commit(
    config: Config,
    location: output.OutputLocation,
    spec: ModelSpec,
    summary: RunSummary,
    result: output.Tally,
    plan: ResourcePlan,
    config_hash: str,
    started_wall: float,
) -> None:
    """Enforce the failure budget, then write the dead-letter table and the manifest."""
    fraction = summary.failed / summary.inputs if summary.inputs else 0.0
    if fraction > config.output.max_failure_fraction:
        raise FailureBudgetExceededError(
            f"{summary.failed} of {summary.inputs} rows failed ({fraction:.1%}), above "
            f"output.max_failure_fraction={config.output.max_failure_fraction}; rows are written "
            f"under {location.uri_of(output.DATA_DIR)} but the run is NOT committed"
        )
    summary.status = "succeeded"
    manifest = {
        "run_id": summary.run_id,
        "job": config.job.name,
        "status": "committed",
        "counts": {"inputs": summary.inputs, "succeeded": summary.succeeded, "failed": summary.failed},
        "failed_by_reason": summary.failed_by_reason,
        "processed_this_run": summary.processed_this_run,
        "resumed": summary.resumed,
        "config_hash": config_hash,
        "config": config.to_dict(),
        "model": {
            "name": spec.name,
            "sha256": spec.weights_sha256,
            "weights": spec.weights_uri,
            "random_init": spec.random_init,
            "preprocessing": asdict(spec.preprocessing),
        },
        "warnings": ["model weights are random (model.random_init)"] if spec.random_init else [],
        "versions": versions(),
        "resource_plan": plan.as_dict(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(summary.seconds, 3),
        "images_per_second": round(summary.images_per_second, 3),
        "layout": {"data": output.DATA_DIR, "failures": output.FAILURES, "rows": result.rows},
    }
    output.commit(location, result, manifest)
