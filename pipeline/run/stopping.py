"""A stop that keeps finished work: SIGINT or SIGTERM during the write drains it, then the run exits.

While the write runs (:func:`pipeline.run.supervisor.watch_write`, inside :func:`draining`), the
CLI's signal handler does not raise: it notes the signal here (:func:`note`). The watcher
then asks the stages to stop through the progress tracker's flag: the decode tasks drop the
rows they have not read, the inference actors the batches they have not started, so Ray
Data's stream runs out and writes its open Parquet part. The watcher waits for that at most
``resources.stop_grace_s`` from the signal, then raises
:class:`~pipeline.errors.RunInterrupted` (exit 128 + the signal, 130 or 143), whether the
write drained or not: what was written is kept and the same command resumes the rest.

Anywhere else in a run a signal raises at once (nothing is in flight that a wait would keep),
and so does a second signal during the drain.

"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError, RunInterrupted

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.outputs.layout import OutputLocation


@dataclass
class _Request:
    draining: bool = False
    signum: int | None = None
    at: float = 0.0  # when the signal came (monotonic)


_REQUEST = _Request()  # signals are the process's: so is the one pending stop


@contextlib.contextmanager
def draining() -> Iterator[None]:
    """While the block runs, a first SIGINT or SIGTERM is noted for the block to drain, not raised."""
    _REQUEST.draining, _REQUEST.signum = True, None
    try:
        yield
    finally:
        _REQUEST.draining, _REQUEST.signum = False, None


def note(signum: int) -> bool:
    """The signal handler's question: True when ``signum`` is noted for a drain (do not raise).

    False outside :func:`draining`, and for a second signal: that one stops at once.
    """
    if not _REQUEST.draining or _REQUEST.signum is not None:
        return False
    _REQUEST.signum, _REQUEST.at = signum, time.monotonic()
    return True


def requested() -> tuple[int, float] | None:
    """The signal noted during the drain and when it came (monotonic), or None."""
    return (_REQUEST.signum, _REQUEST.at) if _REQUEST.signum is not None else None


def rows_kept(location: OutputLocation, done_at_start: int, stop: BaseException) -> tuple[int, int]:
    """After a stop: rows this attempt wrote, and rows its actors finished that no part holds.

    The second is what the next run redoes, from the tracker's count the drain put on the
    :class:`RunInterrupted` (0 when unknown: a KeyboardInterrupt, a signal outside the write).
    Best effort: a store that fails here leaves (0, 0); the next run recounts anyway.
    """
    from pipeline.outputs import restore

    rows_done = stop.rows_done if isinstance(stop, RunInterrupted) else None
    with contextlib.suppress(PipelineError):
        written = max(0, restore.rows_written(location) - done_at_start)
        return written, max(0, (rows_done or 0) - written)
    return 0, 0
