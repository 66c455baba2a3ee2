"""The run's write step: the graph over the inputs still to do, run on Ray and watched until written.

A progress tracker actor on the driver's node counts the rows the inference actors finish and
the S3 retries the decode and write tasks report; the parts and their checkpoints are written
through a filesystem that reports its retries there too (:mod:`pipeline.storage.s3_client`).
:func:`pipeline.run.supervisor.watch_write` runs the write in a thread, and stops the job on a stall
or a lost lease.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.ops.progress import ProgressSeries, start_tracker
from pipeline.outputs import layout
from pipeline.run.cluster import configure_data_context
from pipeline.run.supervisor import Watched, watch_write

if TYPE_CHECKING:
    from pipeline.compute.model import ModelSpec
    from pipeline.compute.multi_actor import ModelRun
    from pipeline.config import Config
    from pipeline.inputs.sources import Source
    from pipeline.ops.display import Display
    from pipeline.ops.metrics import JobMetrics
    from pipeline.outputs.lease import Lease
    from pipeline.run.placement import ResourcePlan
    from pipeline.run.summary import RunSummary


@dataclass(frozen=True)
class Work:
    """What is left to write (its read: ``sources.source_of``) and what the stages need."""

    source: Source
    spec: ModelSpec  # models: the run's combined spec (names, digest, the shared decode)
    state_dict: Any  # models: the tuple of every model's payload
    plan: ResourcePlan
    models: tuple[ModelRun, ...] = ()  # set: several models over one decode (pipeline.run.multi)


class Run(Protocol):
    """What the write step reads and records of the run (``pipeline.run.job``'s run record)."""

    config: Config
    summary: RunSummary
    started_wall: float
    display: Display
    series: ProgressSeries | None
    worker_retries: int

    def held(self) -> layout.OutputLocation:
        """The output, while the job holds its lease."""

    def job_metrics(self) -> JobMetrics:
        """The run's driver metrics."""

    def phase(self, name: str | None) -> None:
        """Enter a named phase of the run."""


def write_with_progress(run: Run, lease: Lease, work: Work) -> tuple[int, float, float | None]:
    """Build the graph over ``work`` and run it; the rows processed, the steady rate, when the first landed.

    The S3 retries the tasks reported go to ``run.worker_retries``, however the write ends.
    """
    import ray

    from pipeline.run.graph import build_dataset, write_parquet

    config, run_id = run.config, run.summary.run_id
    tracker = start_tracker()
    location = run.held().counting_retries(tracker)  # parts and checkpoints report their S3 retries
    configure_data_context(location)
    state_ref = ray.put(work.state_dict) if work.state_dict is not None else None
    # Once, each actor reads it. One chunk: take() of a 512-row batch from a 1M-row table took
    # 0.05 ms against 2 ms from the 8 chunks of the manifest's row groups.
    carried = work.source.carried
    carried_ref = ray.put(carried.combine_chunks()) if carried is not None else None
    dataset = build_dataset(config, work, state_ref, run_id, progress=tracker, carried_ref=carried_ref)
    data_uri, filesystem = location.uri_of(layout.DATA_DIR), location.arrow_fs()
    run.series = ProgressSeries(run.started_wall)
    try:
        watched = Watched(
            config, lease, tracker, work.source.rows, run.job_metrics(), run.display, run.phase, run.series
        )
        processed, steady = watch_write(
            lambda: write_parquet(dataset, data_uri, filesystem, run_id, work.plan), watched
        )
        return processed, steady, ray.get(tracker.first_landed_at.remote())
    finally:
        ray.data.DataContext.get_current().checkpoint_config = None  # later datasets must not inherit it
        with contextlib.suppress(Exception):  # best effort: a lost count never fails the run
            run.worker_retries = int(ray.get(tracker.storage_retries.remote(), timeout=10))
            run.summary.decoded = int(ray.get(tracker.decoded.remote(), timeout=10))
