"""Peak memory of this process and its children, sampled in a thread (``pipeline bench``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Self


@dataclass
class MemorySampler:
    """Peak memory (PSS, so the shared object store counts once) of this process and its children.

    An embedded Ray cluster's processes (raylet, GCS, workers) are all children of the driver.
    Reading PSS walks every mapping of every process: about 60 ms of CPU per sample with
    two ResNet-50 actors, which at two samples a second took a quarter of a core from the
    job it measures. So a sample waits at least ``budget`` times its own cost.
    """

    interval_s: float = 0.5
    budget: float = 50.0
    samples: int = 0
    peak_bytes: int = 0
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                total += process.memory_full_info().pss
            except psutil.Error:
                continue
        return total

    def __enter__(self) -> Self:
        self._stop = threading.Event()

        def loop() -> None:
            assert self._stop is not None  # noqa: S101  # set before the thread starts
            while not self._stop.is_set():
                started = time.thread_time()
                self.peak_bytes = max(self.peak_bytes, self._sample())
                self.samples += 1
                self._stop.wait(max(self.interval_s, self.budget * (time.thread_time() - started)))

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None  # noqa: S101
        assert self._thread is not None  # noqa: S101
        self._stop.set()
        self._thread.join()
