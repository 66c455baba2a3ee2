"""How many S3 requests this process had to send again (throttling, 5xx, timeouts, resets).

:mod:`pipeline.storage.s3_client` counts them here for filesystems that report to no run's tracker: the
driver's own calls (listing, lease, restore, read-back, commit). The job reads the count at its
start and end (``storage_retries`` in the summary and the manifest).
"""

from __future__ import annotations

import threading

_COUNT = [0]
_LOCK = threading.Lock()


def retries() -> int:
    """S3 retries this process's requests needed so far (but those reported to a run's tracker)."""
    with _LOCK:
        return _COUNT[0]


def count(retried: int) -> None:
    """Add ``retried`` requests sent again to :func:`retries`."""
    with _LOCK:
        _COUNT[0] += retried
