"""Which storage calls to an output are waiting for an answer, and since when.

:class:`~pipeline.outputs.layout.OutputLocation` notes each of its calls here while it runs. The lease's
renewal thread (:mod:`pipeline.outputs.lease`) reads it: once a call of another thread has waited longer
than ``resources.stall_timeout_s``, the job is stuck on its output, and it stops renewing the
lease rather than hold the output against every other job while it waits. (On S3 each request is
also bounded by ``storage.call_timeout_s``; a local or network filesystem call may hang for ever.)
"""

from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


class CallsInFlight:
    """The calls in progress: what each is, the thread that made it, and when it started."""

    def __init__(self) -> None:
        self._calls: dict[int, tuple[str, int, float]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    @contextmanager
    def running(self, what: str) -> Iterator[None]:
        """Note ``what`` (e.g. ``write s3://b/out/_SUCCESS``) as waiting while the block runs."""
        key = next(self._ids)
        with self._lock:
            self._calls[key] = (what, threading.get_ident(), time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                del self._calls[key]

    def longest_wait(self, *, other_than: int) -> tuple[str, float] | None:
        """The call that has waited longest, of a thread other than ``other_than``: what, and seconds."""
        now = time.monotonic()
        with self._lock:
            waiting = [
                (now - started, what)
                for what, thread, started in self._calls.values()
                if thread != other_than
            ]
        if not waiting:
            return None
        seconds, what = max(waiting)
        return what, seconds
