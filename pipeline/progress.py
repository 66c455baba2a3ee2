"""Progress while the Ray Data job runs, as the driver sees it.

:class:`ProgressTracker` is a tiny Ray actor the inference actors report each batch to;
:class:`ProgressBar` redraws one line on a terminal; :func:`watch_write` runs the write in a
thread and, every second, reads the tracker, pushes progress metrics, redraws the bar, and
stops the job on a stall (``resources.stall_timeout_s``) or a lost output lease.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from pipeline.errors import JobFailedError, OutputInUseError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config
    from pipeline.lease import Lease
    from pipeline.metrics import JobMetrics

POLL_INTERVAL_S = 1.0
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")


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


def watch_write(
    write_output: Callable[[], None],
    config: Config,
    lease: Lease,
    tracker: Any,
    total: int,
    metrics: JobMetrics,
    bar: ProgressBar,
) -> tuple[int, float]:
    """Run ``write_output`` in a thread; poll progress, push metrics, detect stalls and a lost lease.

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
    try:
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
            stalled = now - last_change if writer.is_alive() else 0.0
            _stop_if_unhealthy(lease, stalled, config.resources.stall_timeout_s, done, total)
    except BaseException:
        # The write is abandoned (interrupt, stall, lost lease): what Ray Data logs about it
        # from here on is noise next to the cause.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        bar.close()
        raise
    bar.close()
    if failure:
        exc = failure[0]
        raise JobFailedError(f"the Ray Data job failed: {root_cause(exc)}") from exc
    ok, failed = ray.get(tracker.get.remote())
    return int(ok) + int(sum(failed.values())), float(ray.get(tracker.steady_rate.remote()))


def _stop_if_unhealthy(lease: Lease, stalled_s: float, timeout_s: float, done: int, total: int) -> None:
    """Raise if another job took the output, or no row finished for ``timeout_s``."""
    if lease.lost is not None:
        raise OutputInUseError(lease.lost)
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
