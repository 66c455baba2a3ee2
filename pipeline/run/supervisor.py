"""The write's control loop: it aborts the run on a stall or a lost lease, and drains it on a stop.

:func:`watch_write` runs the write in a thread and, every second, reads the progress tracker
(:mod:`pipeline.ops.progress`), pushes progress metrics, updates the display, and stops the job
on a stall (``resources.stall_timeout_s``) or a lost output lease; on SIGINT or SIGTERM it
drains the write (:mod:`pipeline.run.stopping`).
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline.errors import JobFailedError, RunInterrupted
from pipeline.ops import logs
from pipeline.run import stopping

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config
    from pipeline.ops.display import Display
    from pipeline.ops.metrics import JobMetrics
    from pipeline.ops.progress import ProgressSeries
    from pipeline.outputs.lease import Lease


POLL_INTERVAL_S = 1.0


WRITER_THREAD = "ray-data-write"  # runs the write; alive after a stall or a lost lease abandoned it


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")


def write_abandoned() -> bool:
    """Whether a write :func:`watch_write` stopped watching (a stall, a lost lease) still runs in Ray Data."""
    return any(thread.name == WRITER_THREAD and thread.is_alive() for thread in threading.enumerate())


@dataclass(frozen=True)
class Watched:
    """What the watch loop follows (the lease, the tracker, the rows expected) and whom it tells."""

    config: Config
    lease: Lease
    tracker: Any  # the run's ProgressTracker actor
    total: int  # rows expected (for shards, what their footers say: 0 when unknown)
    metrics: JobMetrics
    display: Display
    phase: Callable[[str], None]
    series: ProgressSeries | None = None  # each poll's totals, for the manifest


def watch_write(write_output: Callable[[], None], watched: Watched) -> tuple[int, float]:
    """Run ``write_output`` in a thread; poll progress, push metrics, detect stalls and a lost lease.

    ``phase`` is told when the run enters ``starting_workers``, ``writing`` (the first rows
    landed) and ``stopping``: on SIGINT or SIGTERM the write drains (:mod:`pipeline.run.stopping`)
    for at most ``resources.stop_grace_s``, then :class:`RunInterrupted` is raised. Each poll's
    totals also go to ``series``. Returns the rows processed and the steady-state rate.
    """
    import ray

    failure: list[BaseException] = []
    tracker, phase, series = watched.tracker, watched.phase, watched.series

    def write() -> None:
        try:
            write_output()
        except BaseException as exc:  # re-raised in the driver thread
            failure.append(exc)

    writer = threading.Thread(target=write, name=WRITER_THREAD, daemon=True)
    watch = _Watch(watched)
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

    def __init__(self, watched: Watched) -> None:
        self.config, self.lease, self.tracker, self.total = (
            watched.config,
            watched.lease,
            watched.tracker,
            watched.total,
        )
        self.metrics, self.display, self.phase, self.series = (
            watched.metrics,
            watched.display,
            watched.phase,
            watched.series,
        )
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
