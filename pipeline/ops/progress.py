"""Progress while the Ray Data job runs, as the driver sees it.

:class:`ProgressTracker` is a tiny Ray actor the inference actors report each batch to;
:class:`Display` shows phases and rows on a terminal (rich) or logs progress elsewhere;
:func:`watch_write` runs the write in a thread and, every second, reads the tracker, pushes
progress metrics, updates the display, and stops the job on a stall
(``resources.stall_timeout_s``) or a lost output lease.

"""

from __future__ import annotations

import time
from typing import Any

SERIES_EVERY_S = 5.0  # one point of the progress series per this many seconds, at first


SERIES_MAX_POINTS = 400  # then every other point is dropped and the spacing doubled


class ProgressTracker:
    """Counts rows finished by the inference actors (a tiny Ray actor, zero CPUs), and S3 retries.

    The retries are those of the decode and write tasks' filesystems (:mod:`pipeline.storage.s3_client`).
    """

    def __init__(self) -> None:
        self.ok = 0
        self.failed: dict[str, int] = {}
        self.first: tuple[float, int] | None = None  # when the first batch landed, and its rows
        self.last = 0.0
        self.stop = False  # the driver asked the run to stop (pipeline.run.stopping)
        self.retries = 0
        self.decodes = 0  # inputs the decode tasks read: one each, however many models run

    def add_decoded(self, count: int) -> None:
        """Add the inputs one decode batch read."""
        self.decodes += count

    def decoded(self) -> int:
        """Inputs decoded so far (pipeline_job_decoded_rows)."""
        return self.decodes

    def add_retries(self, count: int) -> None:
        """Add S3 retries a worker's request needed."""
        self.retries += count

    def storage_retries(self) -> int:
        """S3 retries reported so far."""
        return self.retries

    def add(self, ok: int, failed: dict[str, int]) -> None:
        """Add one batch's outcome."""
        self.ok += ok
        for reason, count in failed.items():
            self.failed[reason] = self.failed.get(reason, 0) + count
        self.last = time.time()
        if self.first is None:
            self.first = (self.last, ok + sum(failed.values()))

    def request_stop(self) -> None:
        """From now on the stages drop work they have not started."""
        self.stop = True

    def stopping(self) -> bool:
        """True once :meth:`request_stop` was called."""
        return self.stop

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


def start_tracker() -> Any:
    """A :class:`ProgressTracker` actor on the driver's node.

    Hard affinity: a lost worker node must not take the progress counts with it. A soft
    affinity to a head with no CPUs put the tracker on a worker node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    remote = ray.remote(num_cpus=0, scheduling_strategy=here)  # type: ignore[call-overload]  # stub omits node affinity
    return remote(ProgressTracker).remote()


class ProgressSeries:
    """Rows done over time, for the report's throughput plot: small whatever the run's length.

    Points are ``[seconds since the attempt started, rows ok, rows failed]`` (this attempt's
    rows), one per :data:`SERIES_EVERY_S`; past :data:`SERIES_MAX_POINTS` every other point is
    dropped and the spacing doubled, so a week-long run keeps a few kB in ``_SUCCESS``.
    """

    def __init__(self, started_wall: float, every_s: float = SERIES_EVERY_S) -> None:
        self.started_wall = started_wall
        self.every_s = every_s
        self.points: list[list[float]] = [[0.0, 0, 0]]  # nothing was done when the attempt started

    def record(self, ok: int, failed: int, *, now: float | None = None, last: bool = False) -> None:
        """Note the totals at ``now`` (wall clock) if a point is due, or always when ``last``."""
        seconds = round((time.time() if now is None else now) - self.started_wall, 1)
        if not last and seconds - self.points[-1][0] < self.every_s:
            return
        if len(self.points) > 1 and self.points[-1][0] == seconds:
            self.points.pop()
        self.points.append([seconds, int(ok), int(failed)])
        if len(self.points) > SERIES_MAX_POINTS:
            self.points = [*self.points[:-1:2], self.points[-1]]
            self.every_s *= 2

    def as_dict(self) -> dict[str, Any]:
        """The ``progress`` field of ``_SUCCESS`` (docs/inspect.md)."""
        return {"every_s": self.every_s, "columns": ["seconds", "ok", "failed"], "points": self.points}


def report_decoded(tracker: Any, count: int) -> None:
    """In a decode task: add the inputs it read to the tracker's count (None, or none read: nothing)."""
    if tracker is not None and count:
        tracker.add_decoded.remote(count)


def stop_requested(tracker: Any) -> bool:
    """In a stage: True once the driver asked the run to stop (one call to the tracker actor).

    ``tracker``: the run's :class:`~pipeline.ops.progress.ProgressTracker` (None: never stops).
    """
    if tracker is None:
        return False
    import ray

    return bool(ray.get(tracker.stopping.remote()))
