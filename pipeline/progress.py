"""Progress while the Ray Data job runs, as the driver sees it.

:class:`ProgressTracker` is a tiny Ray actor the inference actors report each batch to;
:class:`Display` shows phases and rows on a terminal (rich) or logs progress elsewhere;
:func:`watch_write` runs the write in a thread and, every second, reads the tracker, pushes
progress metrics, updates the display, and stops the job on a stall
(``resources.stall_timeout_s``) or a lost output lease.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import timedelta
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID, TextColumn
from rich.text import Text

from pipeline import logs
from pipeline.errors import JobFailedError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config
    from pipeline.lease import Lease
    from pipeline.metrics import JobMetrics

POLL_INTERVAL_S = 1.0
LOG_EVERY_S = 60.0
SERIES_EVERY_S = 5.0  # one point of the progress series per this many seconds, at first
SERIES_MAX_POINTS = 400  # then every other point is dropped and the spacing doubled
WRITER_THREAD = "ray-data-write"  # runs the write; alive after a stall or a lost lease abandoned it
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")


class ProgressTracker:
    """Counts rows finished by the inference actors (a tiny Ray actor, zero CPUs), and S3 retries.

    The retries are those of the decode and write tasks' filesystems (:mod:`pipeline.s3_client`).
    """

    def __init__(self) -> None:
        self.ok = 0
        self.failed: dict[str, int] = {}
        self.first: tuple[float, int] | None = None  # when the first batch landed, and its rows
        self.last = 0.0
        self.retries = 0

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


class _Figures(ProgressColumn):
    """The rows: done/total, one rate and the time left; a start-up phase: its time so far."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(f"{task.elapsed or 0:.0f}s")
        speed = task.speed  # rows per second over rich's recent window
        rate = f"{speed:.1f} img/s" if speed else "- img/s"
        left = f"  {timedelta(seconds=round((task.total - task.completed) / speed))} left" if speed else ""
        return Text(f"{task.completed:.0f}/{task.total:.0f}  {rate}{left}")


class Display:
    """What a person sees while the job runs.

    On a terminal (rich): the start-up phase by name ("starting Ray", "loading model"),
    then one bar of the rows this run has left, with one rate and the time left; log lines
    are printed above it. Elsewhere: a ``progress`` log line every :data:`LOG_EVERY_S`.
    """

    def __init__(self, stream: IO[str], *, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._phase: TaskID | None = None
        self._rows: TaskID | None = None
        self._total = 0
        self.counting = False
        self._logged_at = time.monotonic()
        self._stream = stream

    def _start(self) -> Progress:
        if self._progress is None:
            console = Console(file=self._stream, highlight=False, soft_wrap=True)
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                _Figures(),
                console=console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
            logs.STDERR.above = lambda text: console.print(Text(text.rstrip("\n")))
        return self._progress

    def phase(self, text: str) -> None:
        """Show a named step that has no row count (start-up, verification, commit)."""
        if not self.enabled:
            return
        progress = self._start()
        if self._rows is not None:
            progress.update(self._rows, visible=False)
        if self._phase is None:
            self._phase = progress.add_task(text, total=None)
        progress.reset(self._phase, total=None, description=text, visible=True)

    def rows(self, total: int) -> None:
        """From now on, count ``total`` rows: the work this run has left."""
        self._total, self.counting = total, True
        if self.enabled:
            progress = self._start()
            if self._phase is not None:
                progress.update(self._phase, visible=False)
            self._rows = progress.add_task("classifying", total=total)

    def update(self, done: int, rate: float = 0.0) -> None:
        """``done`` of the rows counted so far; off a terminal, log it now and then."""
        if self._progress is not None and self._rows is not None:
            self._progress.update(self._rows, completed=done)
        elif not self.enabled and time.monotonic() - self._logged_at >= LOG_EVERY_S:
            self._logged_at = time.monotonic()
            left = (self._total - done) / rate if rate > 0 else None
            logs.get_logger(stage="driver").info(
                "progress", rows_done=done, rows_to_do=self._total, images_per_second=rate, seconds_left=left
            )

    def refresh(self) -> None:
        """Redraw now (the display also redraws itself a few times a second)."""
        if self._progress is not None:
            self._progress.refresh()

    def close(self) -> None:
        """Take the display off the terminal; log lines go straight to stderr again."""
        logs.STDERR.above = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


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


def write_abandoned() -> bool:
    """Whether a write :func:`watch_write` stopped watching (a stall, a lost lease) still runs in Ray Data."""
    return any(thread.name == WRITER_THREAD and thread.is_alive() for thread in threading.enumerate())


def watch_write(
    write_output: Callable[[], None],
    config: Config,
    lease: Lease,
    tracker: Any,
    total: int,
    metrics: JobMetrics,
    display: Display,
    series: ProgressSeries | None = None,
) -> tuple[int, float]:
    """Run ``write_output`` in a thread; poll progress, push metrics, detect stalls and a lost lease.

    Each poll's totals also go to ``series``. Returns the rows processed and the steady-state rate.
    """
    import ray

    failure: list[BaseException] = []

    def write() -> None:
        try:
            write_output()
        except BaseException as exc:  # re-raised in the driver thread
            failure.append(exc)

    writer = threading.Thread(target=write, name=WRITER_THREAD, daemon=True)
    started = time.monotonic()
    last_change, last_done = started, -1
    writer.start()
    display.phase("starting workers")
    done = 0
    try:
        while writer.is_alive():
            writer.join(POLL_INTERVAL_S)
            ok, failed = ray.get(tracker.get.remote())
            done = ok + sum(failed.values())
            if series is not None:
                series.record(ok, done - ok)
            now = time.monotonic()
            if done != last_done:
                last_change, last_done = now, done
            elapsed = now - started
            rate = done / elapsed if elapsed > 0 else 0.0
            metrics.progress(done, total, rate, elapsed)
            if done and not display.counting:  # the first rows landed: start-up is over
                display.rows(total)
            display.update(done, rate)
            stalled = now - last_change if writer.is_alive() else 0.0
            _stop_if_unhealthy(lease, stalled, config.resources.stall_timeout_s, done, total)
    except BaseException:
        # The write is abandoned (interrupt, stall, lost lease): what Ray Data logs about it
        # from here on is noise next to the cause.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        raise
    if failure:
        exc = failure[0]
        raise JobFailedError(f"the Ray Data job failed: {root_cause(exc)}") from exc
    ok, failed = ray.get(tracker.get.remote())
    if series is not None:
        series.record(ok, sum(failed.values()), last=True)
    return int(ok) + int(sum(failed.values())), float(ray.get(tracker.steady_rate.remote()))


def _stop_if_unhealthy(lease: Lease, stalled_s: float, timeout_s: float, done: int, total: int) -> None:
    """Raise if the lease is lost or about to lapse unrenewed, or no row finished for ``timeout_s``."""
    lease.check_renewed()
    if stalled_s > timeout_s:
        raise JobFailedError(
            f"no progress for {timeout_s:.0f}s at {done}/{total} rows (resources.stall_timeout_s): "
            "the cluster cannot schedule a stage or a worker hangs"
        )


def root_cause(exc: BaseException) -> str:
    """The last lines of a (possibly remote) traceback: where the cause is named."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION_LINE.match(line) and "UserCodeException" not in line]
    return (named[0] if named else " | ".join(lines[-3:]))[:600] or type(exc).__name__
