"""The S3 filesystem every pipeline process uses: s3fs, with each request bounded and its retries counted.

Bounded. botocore's connect and read timeouts bound one attempt and ``storage.max_attempts`` the
attempts; s3fs then retries some failures again by itself (up to five times). A store that takes
a request and never answers (seen for ``_SUCCESS`` and for the lease's create) therefore held a
call for ``max_attempts`` read timeouts, five times over: tens of minutes. Every request now also
has a total deadline, ``storage.call_timeout_s``, retries included, after which it fails with
:class:`~pipeline.errors.StoreCallTimeout`: an outage (exit 4, the run resumable), and not a
``TimeoutError``, which s3fs would retry by itself.

Counted. Every attempt botocore makes after a request's first is a retry (throttling, 5xx,
timeouts, resets), counted per process (:mod:`pipeline.storage.s3_retries`). A filesystem made with
a ``retry_sink`` (the run's progress tracker, for what the decode and write tasks read and write)
reports its retries there instead, so the driver adds up a run's retries across the cluster.
aiohttp's own resend of an idempotent request once on a dropped keep-alive connection is not
seen by botocore, and not counted.
"""

from __future__ import annotations

import asyncio
import errno
from contextvars import ContextVar
from typing import Any

from s3fs import S3FileSystem

from pipeline.errors import StoreCallTimeout
from pipeline.storage import s3_retries

DEFAULT_CALL_TIMEOUT_S = 180.0
# The attempts of the request in progress (a list, shared with the handler botocore calls per attempt).
_ATTEMPTS: ContextVar[list[int] | None] = ContextVar("s3_attempts", default=None)


def _count_attempt(**_: Any) -> None:
    """On ``request-created`` (botocore, each attempt): one more attempt of the request in progress."""
    attempts = _ATTEMPTS.get()
    if attempts is not None:
        attempts[0] += 1


class BoundedS3FileSystem(S3FileSystem):  # type: ignore[misc]  # s3fs has no type hints
    """s3fs with a total deadline per request (``call_timeout_s``) and its retries counted.

    ``retry_sink``: an actor with ``add_retries(n)`` (the run's progress tracker) to report the
    retries to, rather than this process's count. It travels with the filesystem to Ray workers.
    """

    def __init__(
        self,
        *args: Any,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        retry_sink: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.call_timeout_s = call_timeout_s
        self.retry_sink = retry_sink

    async def set_session(self, refresh: bool = False, kwargs: dict[str, Any] | None = None) -> Any:
        """s3fs's client, which counts each attempt it makes (once per client)."""
        client = await super().set_session(refresh=refresh, kwargs=kwargs or {})
        if not getattr(client, "_pipeline_counts_attempts", False):
            client.meta.events.register("request-created.s3", _count_attempt)
            client._pipeline_counts_attempts = True  # noqa: SLF001  # our own mark on the client
        return client

    async def _call_s3(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        attempts = [0]
        token = _ATTEMPTS.set(attempts)
        try:
            async with asyncio.timeout(self.call_timeout_s) as budget:
                return await super()._call_s3(method, *args, **kwargs)
        except TimeoutError as exc:
            if not budget.expired():  # a timeout of s3fs's or botocore's own, past their retries
                raise
            name = getattr(method, "__name__", method)
            raise StoreCallTimeout(
                errno.ETIMEDOUT,
                f"{name} got no answer within {self.call_timeout_s:g}s (storage.call_timeout_s)",
            ) from exc
        finally:
            _ATTEMPTS.reset(token)
            self._report(attempts[0] - 1)

    def _report(self, count: int) -> None:
        if count <= 0:
            return
        if self.retry_sink is not None:
            self.retry_sink.add_retries.remote(count)
            return
        s3_retries.count(count)
