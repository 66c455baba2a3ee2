"""Running one job: check, list, plan, execute, verify, commit, report.

Everything that can be refused is refused before Ray starts: the config, the
output state (committed runs are not redone without ``--overwrite``), the
inputs, and the model weights (checksum and architecture).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
from prometheus_client import CollectorRegistry

from pipeline import __version__, output, storage
from pipeline.errors import (
    ClusterUnreachableError,
    FailureBudgetExceededError,
    InputError,
    JobFailedError,
    OutputInUseError,
    PipelineError,
)
from pipeline.lease import Lease
from pipeline.logs import bind_run, get_logger, unbind_run
from pipeline.metrics import JobMetrics
from pipeline.model import ModelSpec, check_architecture, resolve_spec

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config
    from pipeline.planning import ResourcePlan

POLL_INTERVAL_S = 1.0
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")
# Ray keeps at most num_cpus idle workers and kills the rest after a second idle, so on a
# small machine each read, decode and write task respawned a worker (about 1.5 CPU-seconds
# of imports each, taken from the model). The embedded cluster keeps a few more.
EMBEDDED_WORKERS_SOFT_LIMIT = 16
RETRIED_IO_ERRORS = ("SlowDown", "503", "Service Unavailable", "RequestTimeout", "Connection reset")


@dataclass
class RunSummary:
    """What a run did; printed at the end and written as JSON."""

    run_id: str
    status: str
    output_uri: str
    inputs: int = 0
    empty_manifest_cells: int = 0  # blank cells of the manifest's URI column, skipped
    succeeded: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    processed_this_run: int = 0
    resumed: bool = False
    seconds: float = 0.0
    images_per_second: float = 0.0
    steady_images_per_second: float = 0.0
    # Where the wall time went, in seconds from the start of run_job: Ray connected (or the
    # embedded cluster started), first classified batch, last part written, commit done.
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    def render(self) -> str:
        """Human-readable lines for the console."""
        lines = [
            f"run {self.run_id}: {self.status}",
            f"  output     {self.output_uri}",
            f"  inputs     {self.inputs}"
            + (
                f" ({self.empty_manifest_cells} empty manifest cells skipped)"
                if self.empty_manifest_cells
                else ""
            ),
            f"  succeeded  {self.succeeded}",
            f"  failed     {self.failed}",
        ]
        lines += [f"    {reason:<18} {count}" for reason, count in self.failed_by_reason.items()]
        lines += [
            f"  processed  {self.processed_this_run} this run{' (resumed)' if self.resumed else ''}",
            f"  seconds    {self.seconds:.1f}",
            f"  images/s   {self.images_per_second:.1f}",
        ]
        if self.timings:
            lines.append("  timeline   " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        if self.error:
            lines.append(f"  error      {self.error}")
        return "\n".join(lines)


class ProgressTracker:
    """Counts rows finished by the inference actors (a tiny Ray actor, zero CPUs)."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed: dict[str, int] = {}
        self.first: tuple[float, int] | None = None  # when the first batch landed, and its rows
        self.last = 0.0

    def add(self, ok: int, failed: dict[str, int]) -> None:
        """Add one batch's outcome."""
        self.ok += ok
        for reason, count in failed.items():
            self.failed[reason] = self.failed.get(reason, 0) + count
        self.last = time.time()
        if self.first is None:
            self.first = (self.last, ok + sum(failed.values()))

    def steady_rate(self) -> float:
        """Rows per second from the first batch's landing to the last's: start-up excluded."""
        if self.first is None or self.last <= self.first[0]:
            return 0.0
        rows = self.ok + sum(self.failed.values()) - self.first[1]
        return rows / (self.last - self.first[0])

    def get(self) -> tuple[int, dict[str, int]]:
        """Totals so far."""
        return self.ok, dict(self.failed)

    def first_landed_at(self) -> float | None:
        """Wall-clock time the first batch landed (None before it did)."""
        return self.first[0] if self.first else None


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


def connect_ray(config: Config) -> bool:
    """Join the configured cluster, or start an embedded one; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = config.resources.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        wait_for_cluster(address, config.resources.connect_timeout_s)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return True
    ray.init(
        object_store_memory=config.resources.object_store_memory_bytes,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=False,
        _system_config={"num_workers_soft_limit": EMBEDDED_WORKERS_SOFT_LIMIT},
    )
    return True


def wait_for_cluster(address: str, timeout_s: float) -> None:
    """Wait until the cluster's address accepts connections, at most ``timeout_s`` (then exit 6).

    ``ray.init`` itself retries an address nobody answers for minutes; this bounds it.
    ``auto`` and ``local`` are left to Ray (they name no host).
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    if not host or not port.isdigit():
        return
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, remaining))):
                return
        except OSError as exc:
            if time.monotonic() + 1.0 >= deadline:
                raise ClusterUnreachableError(
                    f"the Ray cluster at {address} did not answer within {timeout_s:g}s "
                    f"(resources.connect_timeout_s): {exc}; check resources.ray_address or RAY_ADDRESS "
                    "and that the head node is up"
                ) from None
        time.sleep(1.0)


def _configure_data_context(location: output.OutputLocation) -> None:
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    ctx = DataContext.get_current()
    ctx.checkpoint_config = CheckpointConfig(
        id_column="row_id",
        checkpoint_path=location.uri_of(location.new_checkpoint_dir()),  # empty: we restored, Ray only writes
        delete_checkpoint_on_success=False,
        override_filesystem=location.arrow_fs(),
    )
    ctx.retried_io_errors = list(dict.fromkeys([*ctx.retried_io_errors, *RETRIED_IO_ERRORS]))
    ctx.enable_progress_bars = False  # the job's own bar (ProgressBar) is clearer
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = 0  # a lost block would lose rows: fail instead


def _execute(
    write_output: Callable[[], None],
    config: Config,
    lease: Lease,
    tracker: Any,
    total: int,
    metrics: JobMetrics,
    bar: ProgressBar,
) -> tuple[int, float]:
    """Run the write in a thread; poll progress, push metrics, detect stalls and a lost lease.

    Returns the rows processed and the steady-state rate.
    """
    import ray

    failure: list[BaseException] = []

    def write() -> None:
        try:
            write_output()
        except BaseException as exc:  # re-raised in the driver thread
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
        if lease.lost is not None:
            raise OutputInUseError(lease.lost)
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
    return int(ok) + int(sum(failed.values())), float(ray.get(tracker.steady_rate.remote()))


def _root_cause(exc: BaseException) -> str:
    """The last lines of a (possibly remote) traceback: where the cause is named."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION_LINE.match(line) and "UserCodeException" not in line]
    return (named[0] if named else " | ".join(lines[-3:]))[:600] or type(exc).__name__


def _claim_output(
    location: output.OutputLocation, config: Config, config_hash: str, new_id: str, *, overwrite: bool
) -> tuple[str, bool]:
    """The run id (the unfinished run's, to resume it, else ``new_id``) and whether this run resumes.

    Nothing is deleted here: ``--overwrite`` clears only after the inputs and the model
    have been checked, just before the first write.
    """
    state = output.inspect(location)
    resume_id = output.check_can_start(state, config.job.run_id, config_hash, overwrite=overwrite)
    return resume_id or new_id, resume_id is not None and location.exists(output.INPUTS)


@dataclass
class _Run:
    """A run as the lifecycle's one ``finally`` reports it, whatever point it reached."""

    config: Config
    registry: CollectorRegistry
    summary: RunSummary
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    metrics: JobMetrics | None = None
    location: output.OutputLocation | None = None  # set while the job holds the output's lease
    report: bool = True
    started_ray: bool = False

    def job_metrics(self) -> JobMetrics:
        """The run's driver metrics (created once, under the run id known now)."""
        if self.metrics is None:
            self.metrics = JobMetrics(
                pipeline=self.config.job.name,
                run_id=self.summary.run_id,
                pushgateway_url=self.config.metrics.pushgateway_url,
                push_interval_s=self.config.metrics.push_interval_s,
                registry=self.registry,
            )
        return self.metrics

    def failed(self, exc: Exception) -> PipelineError:
        """Record why the run failed; the error to raise (an unexpected one as :class:`JobFailedError`)."""
        if isinstance(exc, PipelineError):
            self.summary.error = str(exc)
            return exc
        self.summary.error = f"{type(exc).__name__}: {exc}"
        return JobFailedError(self.summary.error)

    def finish(self) -> None:
        """Push the final status and write the summary (status is ``succeeded`` only once committed)."""
        summary = self.summary
        summary.seconds = time.monotonic() - self.started
        try:
            if self.report:
                self.job_metrics().finish(
                    succeeded=summary.status == "succeeded",
                    inputs=summary.inputs,
                    ok=summary.succeeded,
                    failed_by_reason=summary.failed_by_reason,
                    seconds=summary.seconds,
                )
                if self.location is not None:  # best effort: never hides the run's own error
                    output.write_summary(self.location, summary.run_id, summary.as_dict())
            fields = {k: v for k, v in summary.as_dict().items() if k != "run_id"}
            get_logger(run_id=summary.run_id, stage="driver").info("run finished", **fields)
        finally:
            if self.started_ray:
                import ray

                ray.shutdown()
            unbind_run()


def run_job(
    config: Config,
    *,
    overwrite: bool = False,
    registry: CollectorRegistry | None = None,
    progress_stream: IO[str] | None = None,
) -> RunSummary:
    """Run the whole job; raise a :class:`PipelineError` on failure.

    The output is checked (no input in it, no foreign files) and leased before its state
    is read, so two jobs on one output never both write; the lease is held until the job
    ends, committed or not. From here on every failure pushes status ``failed`` and, once
    the output is held, writes a run summary; a job refused because another holds the
    output reports nothing (the holder reports for this pipeline).
    """
    check_architecture(config.model.name)  # a config error: refused before anything is reported
    run = _Run(
        config,
        registry or CollectorRegistry(),
        RunSummary(run_id=config.job.run_id or new_run_id(), status="failed", output_uri=config.output.uri),
    )
    try:
        location = output.OutputLocation.open(config.output.uri, config.storage)
        output.check_safe_target(location, config.input.uri)
        lease = Lease.acquire(location, config.output.lease_seconds)
    except Exception as exc:
        run.report = not isinstance(exc, OutputInUseError)
        error = run.failed(exc)
        run.finish()
        if error is exc:
            raise
        raise error from exc
    with lease:
        run.location = location
        try:
            _run_leased(
                run,
                location,
                lease,
                overwrite=overwrite or config.output.mode == "overwrite",
                stream=progress_stream or sys.stderr,
            )
        except Exception as exc:
            error = run.failed(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            run.finish()
    return run.summary


def _run_leased(
    run: _Run, location: output.OutputLocation, lease: Lease, *, overwrite: bool, stream: IO[str]
) -> None:
    """Claim, list, resolve the model, connect, execute, verify, commit: the run's steps in order."""
    config, summary = run.config, run.summary
    config_hash = config.config_hash()
    summary.run_id, summary.resumed = _claim_output(
        location, config, config_hash, summary.run_id, overwrite=overwrite
    )
    run_id = summary.run_id
    lease.name_run(run_id)
    bind_run(run_id, config.job.name)  # every line from here on, in any module, carries the run id
    log = get_logger(run_id=run_id, stage="driver")
    listing = _inputs_of_run(config, location, run_id, resumed=summary.resumed)
    uris = listing.uris
    summary.inputs, summary.empty_manifest_cells, summary.output_uri = (
        len(uris),
        listing.empty_cells,
        location.uri,
    )
    spec, state_dict = resolve_spec(config.model, config.preprocess, config.storage)
    if spec.random_init:
        log.warning("model has RANDOM weights (model.random_init: true); predictions are meaningless")
    if overwrite:  # inputs and model checked: only now is the old output deleted
        _clear(location, lease, log)
    log.info("run starting", inputs=len(uris), output=location.uri, resumed=summary.resumed, model=spec.name)
    if not summary.resumed:
        output.start_run(
            location, uris, {"run_id": run_id, "config_hash": config_hash, "started_at": run.started_wall}
        )
    show = config.logging.progress is True or (config.logging.progress == "auto" and stream.isatty())
    metrics = run.job_metrics()
    metrics.start(spec.name, __version__, len(uris))
    run.started_ray = connect_ray(config)
    summary.timings["ray_ready"] = time.monotonic() - run.started
    bar = ProgressBar(len(uris), stream, enabled=show)
    result, plan, summary.processed_this_run, summary.steady_images_per_second = _run_on_ray(
        config,
        location,
        lease,
        uris,
        spec,
        state_dict,
        run_id,
        metrics,
        bar,
        summary.timings,
        run.started_wall,
    )
    summary.succeeded, summary.failed, summary.failed_by_reason = (
        result.ok,
        result.failed,
        result.failed_by_reason,
    )
    summary.seconds = time.monotonic() - run.started
    summary.images_per_second = summary.processed_this_run / summary.seconds if summary.seconds else 0.0
    lease.check()  # a job that lost the output to another must not commit
    _commit(config, location, spec, summary, result, plan, config_hash, run.started_wall)
    summary.status = "succeeded"  # only now: the manifest is written and read back
    summary.timings["committed"] = time.monotonic() - run.started


def _clear(location: output.OutputLocation, lease: Lease, log: Any) -> None:
    """``--overwrite``: delete the pipeline's own files under the output, while still holding it."""
    lease.check()
    deleted = location.clear()
    if deleted:
        log.warning("overwriting existing output", output=location.uri, files_deleted=deleted)


def _inputs_of_run(
    config: Config, location: output.OutputLocation, run_id: str, *, resumed: bool
) -> storage.Listing:
    """The run's inputs: listed now, or, on resume, those fixed when the run started.

    A resumed manifest run reads the manifest again (``_inputs.parquet`` keeps URIs with
    their signatures masked, so it cannot be read from) and must find the same inputs.
    """
    if resumed and not config.input.is_manifest:
        return storage.Listing(location.read_inputs())
    listing = storage.list_inputs(config.input, config.storage)
    if resumed:
        fixed = set(location.read_input_ids())
        now = {storage.row_id(uri) for uri in listing.uris}
        if now != fixed:
            raise InputError(
                f"manifest {config.input.uri} changed since run {run_id!r} started: "
                f"{len(now - fixed)} inputs added, {len(fixed - now)} removed; resume with the "
                "manifest it started with, or pass --overwrite to start again"
            )
    if listing.empty_cells:
        get_logger(run_id=run_id, stage="driver").warning(
            "manifest cells without a URI skipped", count=listing.empty_cells, manifest=config.input.uri
        )
    return listing


def _run_on_ray(
    config: Config,
    location: output.OutputLocation,
    lease: Lease,
    uris: list[str],
    spec: ModelSpec,
    state_dict: Any,
    run_id: str,
    metrics: JobMetrics,
    bar: ProgressBar,
    timings: dict[str, float],
    started_wall: float,
) -> tuple[output.Tally, ResourcePlan, int, float]:
    """Plan, restore, write what is left, then read the output back; note the timings."""
    import ray

    from pipeline.planning import plan_resources

    plan: ResourcePlan = plan_resources(config, ray.cluster_resources())  # type: ignore[no-untyped-call]
    log = get_logger(run_id=run_id, stage="driver")
    log.info("resource plan", **plan.as_dict())
    configured = config.resources.decode_num_cpus
    if configured is not None and plan.decode_num_cpus < configured:
        log.warning(
            "resources.decode_num_cpus is more than this local cluster's CPUs: capped",
            configured=configured,
            used=plan.decode_num_cpus,
        )
    todo = output.restore_checkpoint(location, uris, run_id)  # inputs that no committed part holds
    processed, steady = 0, 0.0
    if todo:  # else every part was written before the last attempt stopped: only the commit is left
        processed, steady, first_landed = _write_with_progress(
            config, location, lease, todo, spec, state_dict, run_id, plan, metrics, bar
        )
        if first_landed is not None:
            timings["first_batch"] = first_landed - started_wall
        timings["written"] = time.time() - started_wall
    result = output.tally(location, config.storage, {storage.row_id(uri) for uri in uris})
    # A batch retried after an actor died is reported to the tracker twice: cap the count.
    return result, plan, min(processed, len(todo)), steady


def _write_with_progress(
    config: Config,
    location: output.OutputLocation,
    lease: Lease,
    todo: list[str],
    spec: ModelSpec,
    state_dict: Any,
    run_id: str,
    plan: ResourcePlan,
    metrics: JobMetrics,
    bar: ProgressBar,
) -> tuple[int, float, float | None]:
    """Build the graph over the unfinished inputs and run it to the last part.

    Returns the rows processed, the steady-state rate and when the first batch landed.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.graph import build_dataset, write_parquet

    _configure_data_context(location)
    # On the driver's node, hard: a lost worker node must not take the progress counts with
    # it. A soft affinity to a head with no CPUs put the tracker on a worker node.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    remote = ray.remote(num_cpus=0, scheduling_strategy=here)  # type: ignore[call-overload]  # stub omits node affinity
    tracker = remote(ProgressTracker).remote()
    state_ref = ray.put(state_dict) if state_dict is not None else None
    dataset = build_dataset(config, todo, spec, state_ref, plan, run_id, progress=tracker)
    data_uri, filesystem = location.uri_of(output.DATA_DIR), location.arrow_fs()
    try:
        processed, steady = _execute(
            lambda: write_parquet(dataset, data_uri, filesystem, run_id, config.output.rows_per_file, plan),
            config,
            lease,
            tracker,
            len(todo),
            metrics,
            bar,
        )
        return processed, steady, ray.get(tracker.first_landed_at.remote())
    finally:
        ray.data.DataContext.get_current().checkpoint_config = None  # later datasets must not inherit it


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
        needed = math.ceil(fraction * 1000) / 1000
        raise FailureBudgetExceededError(
            f"{summary.failed} of {summary.inputs} rows failed ({fraction:.1%}), above "
            f"output.max_failure_fraction={config.output.max_failure_fraction}; rows are written "
            f"under {location.uri_of(output.DATA_DIR)} (failed rows with their reason) but the run "
            f"is NOT committed. To accept these failures, run the same command again with --set "
            f"output.max_failure_fraction={needed:g}: it resumes run {summary.run_id} and commits "
            "without redoing a row. To retry the failed inputs, fix them and run again with --overwrite."
        )
    manifest = {
        "run_id": summary.run_id,
        "job": config.job.name,
        "status": "committed",
        "counts": {"inputs": summary.inputs, "succeeded": summary.succeeded, "failed": summary.failed},
        "empty_manifest_cells": summary.empty_manifest_cells,
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
        "timings_s": {name: round(seconds, 3) for name, seconds in summary.timings.items()},
        "layout": {"data": output.DATA_DIR, "failures": output.FAILURES, "rows": result.rows},
    }
    output.commit(location, result, manifest)
