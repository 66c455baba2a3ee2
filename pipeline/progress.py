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
import signal
import threading
import time
from datetime import timedelta
from typing import IO, TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID, TextColumn
from rich.text import Text

from pipeline import logs, stopping
from pipeline.errors import JobFailedError, RunInterrupted

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config
    from pipeline.lease import Lease
    from pipeline.metrics import JobMetrics

POLL_INTERVAL_S = 1.0
# What the display shows for a phase (metrics.JOB_PHASES) whose name does not read as it is.
PHASE_TEXT = {"starting_ray": "starting Ray", "waiting_for_gpu_workers": "waiting for GPU workers"}
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
        self.stop = False  # the driver asked the run to stop (pipeline.stopping)
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


def phase_text(phase: str) -> str:
    """How the display names a phase: ``waiting_for_gpu_workers`` -> "waiting for GPU workers"."""
    return PHASE_TEXT.get(phase, phase.replace("_", " "))


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

    def phase(self, name: str) -> None:
        """Show a named phase (metrics.JOB_PHASES) that has no row count; off a terminal, log it."""
        text = phase_text(name)
        if not self.enabled:
            logs.get_logger(stage="driver").info("phase", phase=name)
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
    phase: Callable[[str], None],
    series: ProgressSeries | None = None,
) -> tuple[int, float]:
    """Run ``write_output`` in a thread; poll progress, push metrics, detect stalls and a lost lease.

    ``phase`` is told when the run enters ``starting_workers``, ``writing`` (the first rows
    landed) and ``stopping``: on SIGINT or SIGTERM the write drains (:mod:`pipeline.stopping`)
    for at most ``resources.stop_grace_s``, then :class:`RunInterrupted` is raised. Each poll's
    totals also go to ``series``. Returns the rows processed and the steady-state rate.
    """
    import ray

    failure: list[BaseException] = []

    def write() -> None:
        try:
            write_output()
        except BaseException as exc:  # re-raised in the driver thread
            failure.append(exc)

    writer = threading.Thread(target=write, name=WRITER_THREAD, daemon=True)
    watch = _Watch(config, lease, tracker, total, metrics, display, phase, series)
    writer.start()
    phase("starting_workers")
    try:
        with stopping.draining():
            while writer.is_alive():
                writer.join(watch.wait_s())
                if not watch.poll(writer.is_alive()):
                    break
            request = stopping.requested()
        if request is not None:
            _raise_stopped(request[0], watch, writer, failure)
    except BaseException:
        # The write is abandoned (interrupt, stall, lost lease) or drained after a stop: what
        # Ray Data logs about it from here on is noise next to the cause.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        raise
    if failure:
        exc = failure[0]
        raise JobFailedError(f"the Ray Data job failed: {root_cause(exc)}") from exc
    ok, failed = ray.get(tracker.get.remote())
    if series is not None:
        series.record(ok, sum(failed.values()), last=True)
    return int(ok) + int(sum(failed.values())), float(ray.get(tracker.steady_rate.remote()))


class _Watch:
    """What :func:`watch_write` follows between polls: progress, the last change, a stop's deadline."""

    def __init__(
        self,
        config: Config,
        lease: Lease,
        tracker: Any,
        total: int,
        metrics: JobMetrics,
        display: Display,
        phase: Callable[[str], None],
        series: ProgressSeries | None,
    ) -> None:
        self.config, self.lease, self.tracker, self.total = config, lease, tracker, total
        self.metrics, self.display, self.phase, self.series = metrics, display, phase, series
        self.started = self.last_change = time.monotonic()
        self.last_done = -1
        self.stop_at: float | None = None  # set by a stop: when its grace ends (monotonic)

    def wait_s(self) -> float:
        """How long to wait for the writer before the next poll."""
        if self.stop_at is None:
            return POLL_INTERVAL_S
        return max(0.0, min(POLL_INTERVAL_S, self.stop_at - time.monotonic()))

    def counts(self) -> tuple[int, dict[str, int]] | None:
        """The tracker's totals; None when, during a stop, Ray does not answer before the grace ends.

        A signal to the whole process group (``kill -- -PGID``, GNU ``timeout``) stops the
        embedded cluster's own processes too: the drain must not hang on them.
        """
        import ray

        ref = self.tracker.get.remote()
        if self.stop_at is None:
            totals: tuple[int, dict[str, int]] = ray.get(ref)
            return totals
        try:
            totals = ray.get(ref, timeout=max(1.0, self.stop_at - time.monotonic()))
        except ray.exceptions.RayError:
            return None
        return totals

    def poll(self, writing: bool) -> bool:
        """Read the tracker: progress out, stall and lease checks; False once a stop's grace ran out."""
        request = stopping.requested()
        if request is not None and self.stop_at is None:
            self.stop_at = request[1] + self.config.resources.stop_grace_s
            _stop(self.tracker, request[0], self.config.resources.stop_grace_s, self.last_done, self.phase)
        totals = self.counts()
        if totals is None:
            return False
        ok, failed = totals
        done = ok + sum(failed.values())
        if self.series is not None:
            self.series.record(ok, done - ok)
        now = time.monotonic()
        if done != self.last_done:
            self.last_change, self.last_done = now, done
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        self.metrics.progress(done, self.total, rate, elapsed)
        if done and not self.display.counting and self.stop_at is None:  # the first rows landed
            self.phase("writing")
            self.display.rows(self.total)
        self.display.update(done, rate)
        if self.stop_at is not None:  # draining: no stall to look for, only the grace's end
            return now < self.stop_at
        stalled = now - self.last_change if writing else 0.0
        _stop_if_unhealthy(self.lease, stalled, self.config.resources.stall_timeout_s, done, self.total)
        return True


def _stop(tracker: Any, signum: int, grace_s: float, done: int, phase: Callable[[str], None]) -> None:
    """SIGINT or SIGTERM during the write: the stages stop taking new work; the write drains."""
    tracker.request_stop.remote()
    phase("stopping")
    logs.get_logger(stage="driver").warning(
        "stopping: batches in flight are finished and written, nothing new is started",
        signal=signal.Signals(signum).name,
        stop_grace_s=grace_s,
        rows_done=max(0, done),
    )


def _raise_stopped(
    signum: int, watch: _Watch, writer: threading.Thread, failure: list[BaseException]
) -> NoReturn:
    """Raise the interrupt a stop ends in, with the rows the actors finished by then."""
    totals = watch.counts()
    done = watch.last_done if totals is None else totals[0] + sum(totals[1].values())
    log = logs.get_logger(stage="driver")
    if writer.is_alive():
        log.warning("resources.stop_grace_s ran out before the write drained: the part in flight is redone")
    elif failure:
        log.warning("the write failed while it drained", error=root_cause(failure[0]))
    raise RunInterrupted(signum, rows_done=max(0, int(done)))


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
