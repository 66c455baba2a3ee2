"""Running one job: check, list, plan, execute, verify, commit, report.

Everything that can be refused is refused before Ray starts: the config, the
output state (committed runs are not redone without ``--overwrite``), the
inputs, and the model weights (checksum and architecture).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from pipeline._version import __version__
from pipeline.compute.sources import check_model, read_weights, resolve_spec
from pipeline.errors import OutputInUseError, PipelineError, RunInterrupted, as_pipeline_error
from pipeline.inputs import manifest
from pipeline.inputs.listing import list_inputs
from pipeline.inputs.sources import source_of
from pipeline.ops.display import Display
from pipeline.ops.logs import STDERR, bind_run, get_logger, unbind_run
from pipeline.ops.metrics import JobMetrics
from pipeline.ops.push_auth import auth_handler
from pipeline.outputs import claim, run_state
from pipeline.outputs.commit import RunRecord
from pipeline.outputs.run_output import RunOutput
from pipeline.outputs.tables.previous_table import find_any_previous
from pipeline.run import stopping
from pipeline.run.cluster import connect_ray, gpu_worker_requested, wait_for_gpu_workers
from pipeline.run.multi import MultiRun
from pipeline.run.summary import RunSummary
from pipeline.run.supervisor import write_abandoned
from pipeline.run.write_step import Work, write_with_progress
from pipeline.storage import s3_retries

if TYPE_CHECKING:
    from pipeline.compute.model import CachedWeights, ModelSpec
    from pipeline.config import Config
    from pipeline.inputs.listing import Listing
    from pipeline.ops.progress import ProgressSeries
    from pipeline.outputs import layout
    from pipeline.outputs.lease import Lease
    from pipeline.outputs.previous import PreviousOutput
    from pipeline.outputs.tally import Tally
    from pipeline.run.placement import ResourcePlan


@dataclass
class _Run:
    """A run as the lifecycle's one ``finally`` reports it, whatever point it reached."""

    config: Config
    registry: CollectorRegistry
    summary: RunSummary
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    metrics: JobMetrics | None = None
    output: RunOutput | None = None  # set while the job holds the output's lease
    report: bool = True
    started_ray: bool = False
    done_at_start: int | None = None  # rows already written when this attempt began (after restore)
    display: Display = field(default_factory=lambda: Display(sys.stderr, enabled=False))
    series: ProgressSeries | None = None  # rows done over time, once this attempt writes
    retries_at_start: int = field(default_factory=s3_retries.retries)  # this process's S3 retries
    worker_retries: int = 0  # S3 retries the decode and write tasks reported
    # Set once the outcome is decided (_SUCCESS read back, or a failure being reported): the
    # CLI's signal handler stops interrupting then, so the exit code agrees with the summary.
    settled: threading.Event = field(default_factory=threading.Event)
    phase_at: float = 0.0  # when the current phase began (monotonic)
    previous: PreviousOutput | None = None  # an incremental run's previous output (output.previous)
    many: MultiRun | None = None  # models: several models over one decode (pipeline.run.multi)

    def storage_retries(self) -> int:
        """S3 retries of this run so far: the driver's, and those the tasks reported."""
        return s3_retries.retries() - self.retries_at_start + self.worker_retries

    def held(self) -> layout.OutputLocation:
        """The output's location, while the job holds its lease."""
        assert self.output is not None  # noqa: S101  # only called between lease and release
        return self.output.location

    def job_metrics(self) -> JobMetrics:
        """The run's driver metrics (created once, under the run id known now)."""
        if self.metrics is None:
            m = self.config.metrics
            self.metrics = JobMetrics(
                pipeline=self.config.job.name,
                run_id=self.summary.run_id,
                pushgateway_url=m.pushgateway_url,
                push_interval_s=m.push_interval_s,
                push_handler=auth_handler(m),
                registry=self.registry,
            )
        return self.metrics

    def phase(self, name: str | None) -> None:
        """Enter a named phase (None: the run ends in the one it is in): shown, logged, pushed, timed."""
        now, current, phases = time.monotonic(), self.summary.phase, self.summary.phases
        if current is not None:
            phases[current] = phases.get(current, 0.0) + now - self.phase_at
        self.phase_at = now
        if name is not None:
            self.summary.phase = name
            self.display.phase(name)
            self.job_metrics().set_phase(name)  # pipeline_job_phase, pushed at once

    def failed(self, exc: Exception) -> PipelineError:
        """Record why the run failed, and the rows it wrote; the error to raise (``as_pipeline_error``).

        Ray is left up under a write abandoned on a stall or a lost lease, as after an interrupt
        (shut down under Ray Data's thread, it ended the process with exit 1 and lost the error).
        """
        self.started_ray = self.started_ray and not write_abandoned()
        self.count_written()
        self.summary.error = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
        return as_pipeline_error(exc)

    def count_written(self) -> None:
        """``processed_this_run`` of a run that stopped while writing: rows in its completely written parts.

        Counted from the checkpoints (the parts each vouches for); only if not known already.
        """
        if self.output is not None and self.done_at_start is not None and not self.summary.processed_this_run:
            with contextlib.suppress(PipelineError):  # best effort: the next run recounts anyway
                self.summary.processed_this_run = self.output.rows_written() - self.done_at_start

    def interrupted(self, exc: BaseException) -> bool:
        """SIGINT or SIGTERM: say so, with the rows written by now (after the drain); False if committed.

        A signal that came after this run's ``_SUCCESS`` was written (while it was read back)
        changes nothing: the run succeeded, and says so. Otherwise Ray is left up (shut down
        under Ray Data's threads, still writing if the grace ran out, it ended the process with
        exit 1); the CLI exits after the summary; the next run deletes parts in flight.
        """
        summary = self.summary
        if self.output is not None and self.output.committed_by(summary.run_id):
            summary.status = "succeeded"
        if summary.status == "succeeded":  # committed before the signal came: it stays so
            self.settled.set()
            return False
        summary.status = "interrupted"
        summary.error = str(exc) or "interrupted"
        self.started_ray = False
        if self.output is not None and self.done_at_start is not None:
            kept = stopping.rows_kept(self.output.location, self.done_at_start, exc)
            summary.processed_this_run, summary.unwritten_rows = kept
        return True

    def stop_ray(self) -> None:
        """Shut down the cluster this run started (once)."""
        if self.started_ray:
            import ray

            self.started_ray = False
            ray.shutdown()

    def finish(self) -> None:
        """Push the final status and write the summary (status is ``succeeded`` only once committed)."""
        self.settled.set()
        summary = self.summary
        summary.seconds = time.monotonic() - self.started
        summary.storage_retries = self.storage_retries()
        self.phase(None)
        self.display.close()
        try:
            if self.report:
                if summary.incremental is not None and "carried" in summary.incremental:
                    self.job_metrics().set_incremental(summary.incremental)
                elif summary.status == "succeeded":  # a full run: every row computed, nothing carried
                    self.job_metrics().set_incremental({"carried": 0, "computed": summary.inputs})
                self.job_metrics().set_decoded(summary.decoded)
                self.job_metrics().finish(
                    succeeded=summary.status == "succeeded",
                    inputs=summary.inputs,
                    ok=summary.succeeded,
                    failed_by_reason=summary.failed_by_reason,
                    seconds=summary.seconds,
                    storage_retries=summary.storage_retries,
                )
                if self.output is not None:  # best effort: never hides the run's own error
                    self.output.write_summary(summary.run_id, summary.as_dict())
            fields = {k: v for k, v in summary.as_dict().items() if k != "run_id"}
            log = get_logger(run_id=summary.run_id, stage="driver")
            log.info("run finished", **fields)
            if self.config.metrics.summary_path:
                try:
                    summary.write(self.config.metrics.summary_path)
                except OSError as exc:  # best effort: never hides the run's own error
                    log.warning(
                        "could not write metrics.summary_path",
                        path=self.config.metrics.summary_path,
                        error=str(exc),
                    )
        finally:
            self.stop_ray()
            unbind_run()


def run_job(
    config: Config,
    *,
    overwrite: bool = False,
    registry: CollectorRegistry | None = None,
    progress_stream: IO[str] | None = None,
    settled: threading.Event | None = None,
) -> RunSummary:
    """Run the whole job; raise a :class:`PipelineError` on failure.

    The output is checked (:mod:`pipeline.outputs.safety`); one committed with this config
    (its settings and its weights' bytes) is left as it is (status ``already_committed``).
    Otherwise it is leased before its state is read, so two jobs on one output never both
    write; the lease is held until the job ends, committed or not. From here on every failure
    pushes status ``failed`` and, once the output is held, writes a run summary; a job refused
    because another holds the output reports nothing (the holder reports for this pipeline).
    ``settled``: see :class:`_Run`.
    """
    many, config = _models_of(config)  # a config error: refused before anything is reported
    overwrite = overwrite or config.output.mode == "overwrite"
    run = _Run(
        config,
        registry or CollectorRegistry(),
        RunSummary(
            run_id=config.job.run_id or run_state.new_run_id(),
            status="failed",
            output_uri=config.output.uri,
            task=config.model.task,
        ),
    )
    stream = progress_stream or STDERR.stream()
    show = config.logging.progress is True or (config.logging.progress == "auto" and stream.isatty())
    run.display = Display(stream, enabled=show)
    run.settled = settled or run.settled
    run.many = many
    weights = functools.cache(
        many.weights if many else functools.partial(read_weights, config.model, config.storage)
    )
    try:
        output = RunOutput.open(config)
        done = output.committed_here(lambda: weights().sha256, overwrite=overwrite)
        pending = done is not None and output.table_pending(done)
        if done is not None and not pending:  # nothing written, nothing pushed: it reported itself
            run.summary, run.report = RunSummary.of_commit(done, output.uri), False
            run.finish()
            return run.summary
        lease = output.take()
    except Exception as exc:
        run.report = not isinstance(exc, OutputInUseError)
        error = run.failed(exc)
        run.finish()
        if error is exc:
            raise
        raise error from exc
    if pending:  # committed, but not to the table output.format names: that commit alone
        return _commit_table_only(run, output, lease)
    with lease, contextlib.ExitStack() as models_leased:
        run.output = output
        try:
            if many is not None:  # each model's output checked as its own run would, and leased
                many.hold(models_leased, overwrite=overwrite)
            _run_leased(run, output, weights, overwrite=overwrite)
        except Exception as exc:
            error = run.failed(exc)
            if error is exc:
                raise
            raise error from exc
        except (RunInterrupted, KeyboardInterrupt) as exc:
            if run.interrupted(exc):
                raise
        finally:
            run.finish()
    return run.summary


def _models_of(config: Config) -> tuple[MultiRun | None, Config]:
    """``models:``'s models, each checked, and the combined run's config; else the one model checked."""
    many = MultiRun.of(config)
    if many is None:
        check_model(config.model)
        return None, config
    return many, many.root


def _commit_table_only(run: _Run, output: RunOutput, lease: Lease) -> RunSummary:
    """A run committed as Parquet, rerun with a table format: the table commit, nothing computed.

    Nothing is pushed (the committed run reported itself); a failure is reported as any run's.
    """
    with lease:
        run.output = output
        try:
            manifest = output.commit_table()
        except Exception as exc:
            error = run.failed(exc)
            run.finish()
            if error is exc:
                raise
            raise error from exc
        run.summary, run.report = RunSummary.of_commit(manifest, output.uri, status="table_committed"), False
        get_logger(run_id=run.summary.run_id, stage="driver").info(
            "committed run's parts added to the table, nothing computed", table=manifest["table"]
        )
        run.finish()
    return run.summary


def _run_leased(run: _Run, output: RunOutput, weights: CachedWeights, *, overwrite: bool) -> None:
    """Claim, list, resolve the model, connect, execute, verify, commit: the run's steps in order."""
    config, summary = run.config, run.summary
    listing, resuming = _claim_and_list(run, output, weights, overwrite=overwrite)
    if run.many is not None:  # each model's output: empty, this run's, or to be overwritten
        run.many.check_started(summary.run_id, overwrite=overwrite)
    run.phase("loading_model")
    if run.many is not None:  # every model: one combined spec (the shared decode), their payloads
        spec, state_dict = run.many.resolve()
    else:
        spec, state_dict = resolve_spec(config.model, config.preprocess, config.storage, weights())
    weights.cache_clear()  # the bytes: the state dict holds the tensors from here on
    config_hash = config.config_hash(spec.weights_sha256)  # what the weights are, not only where
    log = get_logger(run_id=summary.run_id, stage="driver")
    if spec.random_init:
        log.warning("model has RANDOM weights (model.random_init: true); predictions are meaningless")
    if overwrite and (
        deleted := output.clear() + (run.many.clear() if run.many else 0)
    ):  # inputs and model checked: only now is it deleted
        log.warning("overwriting existing output", output=output.uri, files_deleted=deleted)
    log.info("run starting", inputs=len(listing), output=output.uri, resuming=resuming, model=spec.name)
    run.previous = _previous(run, listing, config_hash)  # refused here: before anything is written
    if not resuming:
        output.start(listing, _run_state(run, listing, spec, config_hash))
    run.job_metrics().start(spec.name, __version__, len(listing))
    run.phase("starting_ray")
    run.started_ray = connect_ray(config)
    summary.timings["ray_ready"] = time.monotonic() - run.started
    result, plan = _run_on_ray(run, output, listing, spec, state_dict)
    summary.seconds = time.monotonic() - run.started
    summary.images_per_second = summary.processed_this_run / summary.seconds if summary.seconds else 0.0
    output.held().check()  # a job that lost the output to another must not commit
    run.phase("committing")
    series = run.series.as_dict() if run.series is not None else None
    record = RunRecord(
        config,
        summary.as_dict(),
        spec.manifest_entry(),
        plan.as_dict(),
        config_hash,
        run.started_wall,
        series,
    )
    if run.many is not None:  # every model's output committed first; the combined _SUCCESS last
        run.many.commit_models(listing, output, record)
    output.commit(result, record)
    summary.status = "succeeded"  # only now: the manifest is written and read back
    run.settled.set()
    summary.timings["committed"] = time.monotonic() - run.started
    if config.output.report:  # after the commit: a report that fails only logs a warning
        from pipeline.review.report import write_after_commit

        write_after_commit(output.location, config.storage, log)


def _claim_and_list(
    run: _Run, output: RunOutput, weights: CachedWeights, *, overwrite: bool
) -> tuple[Listing, bool]:
    """Claim the output (the run id: a new run's, or the unfinished one's), then list the inputs.

    A resumed run must find the inputs it started with, their carried columns of the same
    types, and keeps its input format. Whether it resumes is returned beside the listing.
    """
    config, summary = run.config, run.summary
    summary.run_id, resuming = output.claim(lambda: weights().sha256, summary.run_id, overwrite=overwrite)
    run_id = summary.run_id
    bind_run(run_id, config.job.name)  # every line from here on, in any module, carries the run id
    run.phase("listing_inputs")
    listing = list_inputs(config.input, config.storage)
    if resuming:
        output.check_inputs_unchanged(listing, run_id)
        listing = output.as_started(listing, run_id)  # parts written before hold its types
    if listing.empty_cells:
        get_logger(run_id=run_id, stage="driver").warning(
            "manifest cells without a URI skipped", count=listing.empty_cells, manifest=config.input.uri
        )
    summary.input_format, summary.inputs = listing.format, len(listing.uris)
    summary.empty_manifest_cells, summary.output_uri = listing.empty_cells, output.uri
    return listing, resuming


def _previous(run: _Run, listing: Listing, config_hash: str) -> PreviousOutput | None:
    """``output.previous``, checked (:func:`~.previous_table.find_any_previous`); None: a full run."""
    config, summary = run.config, run.summary
    previous, why = find_any_previous(config, config_hash)
    if previous is not None and (made := previous.manifest.get("input_format", "files")) != listing.format:
        why, previous = (
            f"{previous.uri} was read as {made}, this run as {listing.format}: every input is computed",
            None,
        )
    log = get_logger(run_id=summary.run_id, stage="driver")
    if why is not None:
        log.warning("full run", reason=why)
        summary.incremental = {"previous": config.output.previous, "full_run": why}
    elif listing.stamps is None and listing.versions is None:
        log.warning(
            "a manifest without input.version_column gives no fingerprints: every input is computed again"
        )
    return previous


def _run_state(run: _Run, listing: Listing, spec: ModelSpec, config_hash: str) -> dict[str, Any]:
    """A new run's ``_run.json``: its id, config hash, start, input format, weights, carried columns."""
    state: dict[str, Any] = {
        "run_id": run.summary.run_id,
        "config_hash": config_hash,
        "started_at": run.started_wall,
        "input_format": listing.format,
        claim.WEIGHTS_KEY: spec.weights_sha256,
    }
    if listing.carried is not None:
        state["passthrough_columns"] = manifest.described(listing.carried.schema)
    return state


def _run_on_ray(
    run: _Run, output: RunOutput, listing: Listing, spec: ModelSpec, state_dict: Any
) -> tuple[Tally, ResourcePlan]:
    """Plan, restore, write what is left, then read the output back; note the timings and counts."""
    import ray

    from pipeline.run.placement import plan_resources

    config, summary, timings = run.config, run.summary, run.summary.timings
    local = config.resources.placement == "local"  # else planned from the declared worker groups
    plan = plan_resources(config, ray.cluster_resources() if local else {})  # type: ignore[no-untyped-call]
    log = get_logger(run_id=summary.run_id, stage="driver")
    log.info("resource plan", **plan.as_dict())
    configured = config.resources.decode_num_cpus
    if configured is not None and plan.decode_num_cpus < configured:
        log.warning(
            "resources.decode_num_cpus is more than this local cluster's CPUs: capped",
            configured=configured,
            used=plan.decode_num_cpus,
        )
    with gpu_worker_requested(plan):  # the GPU pods start while the checkpoint is read
        run.phase("restoring_checkpoint")
        remaining = output.restore(listing, summary.run_id)  # what no completely written part holds
        summary.resumed = remaining.done > 0  # said only when rows are actually skipped
        if run.previous is not None:  # an incremental run: the previous rows still current, carried
            remaining, carried = output.carry_forward(run.previous, listing, remaining)
            summary.incremental = carried.as_dict()
            log.info("carried forward from the previous output", **carried.as_dict())
        run.done_at_start = remaining.done
        if (
            remaining.uris and plan.actor_num_gpus > 0
        ):  # else nothing will run on a GPU: no worker to wait for
            run.phase("waiting_for_gpu_workers")
            wait_for_gpu_workers(config, plan)
            timings["gpu_workers_ready"] = time.monotonic() - run.started
    processed, steady = 0, 0.0
    if remaining.uris:  # else every part was written before the last attempt stopped: only the commit is left
        source = source_of(config, listing, remaining, output.ledger())
        processed, steady, first_landed = write_with_progress(
            run, output.held(), Work(source, spec, state_dict, plan, run.many.runs if run.many else ())
        )
        if (
            source.exact
        ):  # a batch retried after an actor died is reported to the tracker twice: cap the count
            processed = min(processed, source.rows)
        if first_landed is not None:
            timings["first_batch"] = first_landed - run.started_wall
        timings["written"] = time.time() - run.started_wall
    summary.processed_this_run, summary.steady_images_per_second = processed, steady
    run.phase("verifying")
    summary.storage_retries = run.storage_retries()  # as of the read-back, for the manifest
    result = output.tally(listing)
    summary.succeeded, summary.failed, summary.failed_by_reason = (
        result.ok,
        result.failed,
        result.failed_by_reason,
    )
    summary.failed_shards = result.failed_shards
    if result.counted_inputs is not None:  # a shard's records are counted only once read back
        summary.inputs = result.counted_inputs
        if summary.incremental is not None and "carried" in summary.incremental:  # records computed
            summary.incremental["computed"] = result.counted_inputs - summary.incremental["carried"]
    return result, plan
