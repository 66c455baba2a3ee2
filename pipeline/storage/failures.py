"""What a storage failure means, and how it is said: transient or not, one line, no credential.

Transient failures (:func:`is_transient`, and :data:`RETRIED_IO_ERRORS` as Ray Data matches them)
are retried by botocore, then raised: the job fails and can be resumed, rather than committing rows
lost to an outage. Object-level ones become a row's failure reason. Errors name the URI and
endpoint, never a credential.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError, StorageError
from pipeline.ops.redaction import redact_url, scrub
from pipeline.storage.uris import fs_path, is_remote

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.config.sections import StorageConfig


MAX_DETAIL_CHARS = 300


_THROTTLED = ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded")


TRANSIENT_CODES = frozenset({*_THROTTLED, "RequestTimeout", "ServiceUnavailable", "InternalError"})


HTTP_SERVER_ERROR = 500


HTTP_PRECONDITION_FAILED = 412


RETRYABLE_STATUS = frozenset({408, 429})


TRANSIENT_ERRNOS = frozenset({errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET})


# The same transient failures as Ray Data recognises them in a read or write task's
# error message, to retry the task (DataContext.retried_io_errors).
RETRIED_IO_ERRORS = (
    *("SlowDown", "503", "Service Unavailable", "RequestTimeout", "Connection reset"),
    "storage.call_timeout_s",  # pipeline.storage.s3_client's deadline: a part write the store never answered
)


def botocore_errors() -> tuple[type[BaseException], ...]:
    """``(BotoCoreError, ClientError)`` where botocore is installed (it comes with s3fs)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - only S3 needs botocore
        return ()
    return (BotoCoreError, ClientError)


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the storage layer (I/O, botocore), not from our code."""
    return isinstance(exc, (OSError, *botocore_errors()))


def response_code(exc: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status of ``exc`` or its cause, where it carries a response."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return code, status
    return "", 0


def is_transient(exc: BaseException) -> bool:
    """Throttling, server errors, timeouts and connection failures: worth trying again later."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    code, status = response_code(exc)
    if code or status:
        return code in TRANSIENT_CODES or status >= HTTP_SERVER_ERROR or status in RETRYABLE_STATUS
    botocore = botocore_errors()
    if botocore and isinstance(exc, botocore[0]):  # BotoCoreError: connection, timeout, protocol
        return not type(exc).__name__.startswith(("NoCredentials", "PartialCredentials", "NoRegion"))
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def describe(exc: BaseException) -> str:
    """A one-line, credential-free description: exception type and first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return scrub(text)[:MAX_DETAIL_CHARS]


def _endpoint_note(storage: StorageConfig | None, uri: str) -> str:
    if storage is None or not is_remote(uri):
        return ""
    if storage.endpoint_url:
        return f" (endpoint {redact_url(storage.endpoint_url)}, {storage.max_attempts} attempts)"
    return f" ({storage.max_attempts} attempts)"


def storage_error(
    action: str, uri: str, exc: BaseException, storage: StorageConfig | None = None
) -> StorageError:
    """A :class:`StorageError` naming what failed, where, and why, without credentials."""
    if is_transient(exc):
        hint = "storage unreachable or refusing requests"
    elif is_storage_error(exc):
        hint = "storage refused the request"
    else:
        hint = "failed"
    return StorageError(
        f"cannot {action} {redact_url(uri)}{_endpoint_note(storage, uri)}: {hint}: {describe(exc)}"
    )


@contextmanager
def translate_errors(action: str, uri: str, storage: StorageConfig | None = None) -> Iterator[None]:
    """Turn failures of the wrapped storage calls into StorageError.

    ``FileNotFoundError`` stays itself (a missing file is the caller's to judge), unless the
    bucket is what is missing: then no call under that URI can work, and the error names it.
    """
    try:
        yield
    except FileNotFoundError as exc:
        if response_code(exc)[0] != "NoSuchBucket":
            raise
        bucket = fs_path(uri).split("/", 1)[0]
        raise StorageError(
            f"cannot {action} {redact_url(uri)}{_endpoint_note(storage, uri)}: bucket {bucket!r} does "
            "not exist; create it, or fix the URI"
        ) from exc
    except PipelineError:
        raise
    except Exception as exc:
        raise storage_error(action, uri, exc, storage) from exc
