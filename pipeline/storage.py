"""Filesystems, input listing and byte fetching, for local paths and object storage.

One fsspec filesystem per URI scheme, built from :class:`StorageConfig`. S3
credentials come only from the standard AWS chain (environment, profile, web
identity / IRSA): the config has no credential fields, so none can leak into
logs or the manifest, and the filesystem objects pickled to Ray workers carry
only the endpoint, region, timeouts and retry settings.

Storage failures are sorted in two kinds. Transient ones (throttling, 5xx,
timeouts, refused connections) are retried by botocore and, once the retries
are spent, raised: the job fails and can be resumed, rather than committing rows
lost to an outage. Object-level ones (not found, permission denied) become a
row's failure reason. Errors raised to the user name the URI and endpoint, never
a credential.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError, PipelineError, StorageError
from pipeline.schema import FailureReason

if TYPE_CHECKING:
    from collections.abc import Iterator

    import fsspec
    import pyarrow.fs

    from pipeline.config import InputConfig, StorageConfig

ROW_ID_HEX_CHARS = 20
RETRY_MODE = "standard"
MAX_DETAIL_CHARS = 300
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
    }
)
HTTP_CLIENT_ERROR = 400
HTTP_SERVER_ERROR = 500
RETRYABLE_STATUS = frozenset({408, 429})
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def is_remote(uri: str) -> bool:
    """True for ``scheme://`` URIs other than ``file://``."""
    return "://" in uri and not uri.startswith("file://")


def normalise(uri: str) -> str:
    """Local paths become absolute; remote URIs stay as given, without a trailing slash."""
    if is_remote(uri):
        return uri.rstrip("/")
    return str(Path(uri.removeprefix("file://")).expanduser().resolve())


def storage_options(storage: StorageConfig) -> dict[str, Any]:
    """Options for fsspec's S3 filesystem: endpoint, region, timeouts and botocore's retries.

    Retries use botocore's ``standard`` mode: exponential backoff with jitter on
    throttling (503 SlowDown), 5xx answers, timeouts and refused connections, at
    most ``max_attempts`` tries per request. Listings are never cached, because
    other processes (Ray workers) write under the same prefixes. No credentials:
    botocore finds them itself (environment, profile, web identity / IRSA).
    """
    client_kwargs: dict[str, Any] = {}
    if storage.endpoint_url:
        client_kwargs["endpoint_url"] = storage.endpoint_url
    if storage.region:
        client_kwargs["region_name"] = storage.region
    return {
        "anon": storage.anonymous,
        "client_kwargs": client_kwargs,
        "config_kwargs": {
            "retries": {"max_attempts": storage.max_attempts, "mode": RETRY_MODE},
            "connect_timeout": storage.connect_timeout_s,
            "read_timeout": storage.read_timeout_s,
        },
        "use_listings_cache": False,
    }


def fsspec_filesystem(uri: str, storage: StorageConfig) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem that serves ``uri``."""
    import fsspec

    if not is_remote(uri):
        return fsspec.filesystem("file")
    protocol = uri.split("://", 1)[0]
    options = storage_options(storage) if protocol in ("s3", "s3a") else {}
    try:
        return fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"no filesystem for {protocol}:// URIs: {exc}") from exc


def fs_path(uri: str) -> str:
    """The path part fsspec and pyarrow expect (``bucket/key`` for S3)."""
    return uri.split("://", 1)[1] if is_remote(uri) else uri


def arrow_filesystem(uri: str, storage: StorageConfig) -> pyarrow.fs.FileSystem:
    """A pyarrow view of the same fsspec filesystem, for Ray Data's readers and writers."""
    import pyarrow.fs

    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fsspec_filesystem(uri, storage)))


def row_id(uri: str) -> str:
    """Stable id of an input: the same URI gives the same id on every run."""
    return hashlib.sha256(uri.encode()).hexdigest()[:ROW_ID_HEX_CHARS]


@dataclass(frozen=True)
class Listing:
    """The inputs of a run, in a stable order."""

    uris: list[str]

    def __len__(self) -> int:
        return len(self.uris)


def _with_scheme(uri: str, path: str) -> str:
    return f"{uri.split('://', 1)[0]}://{path}" if is_remote(uri) else path


def list_inputs(source: InputConfig, storage: StorageConfig) -> Listing:
    """Find every input: walk a directory or prefix, or read a manifest's URI column."""
    uri = normalise(source.uri)
    fs = fsspec_filesystem(uri, storage)
    try:
        if source.is_manifest:
            uris = _read_manifest(uri, source.manifest_column, fs)
        else:
            uris = _walk(uri, fs, source)
    except FileNotFoundError as exc:
        raise InputError(f"input {uri} does not exist") from exc
    except PermissionError as exc:
        raise InputError(f"input {uri} cannot be listed: permission denied") from exc
    except PipelineError:
        raise
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        raise storage_error("list inputs at", uri, exc, storage) from exc
    if source.limit is not None:
        uris = uris[: source.limit]
    if not uris:
        raise InputError(
            f"no inputs found at {uri} (extensions {', '.join(source.extensions)}, "
            f"recursive={source.recursive})"
        )
    duplicates = len(uris) - len(set(uris))
    if duplicates:
        raise InputError(f"input manifest {uri} lists {duplicates} URIs more than once")
    return Listing(uris)


def _walk(uri: str, fs: fsspec.AbstractFileSystem, source: InputConfig) -> list[str]:
    root = fs_path(uri)
    if not fs.isdir(root):
        if fs.exists(root):
            raise InputError(f"input {uri} is a file; give a directory, a prefix or a .parquet/.csv manifest")
        raise FileNotFoundError(root)
    paths = fs.find(root, maxdepth=None if source.recursive else 1)
    suffixes = tuple(source.extensions)
    return sorted(_with_scheme(uri, path) for path in paths if path.lower().endswith(suffixes))


def _read_manifest(uri: str, column: str, fs: fsspec.AbstractFileSystem) -> list[str]:
    import pyarrow.csv
    import pyarrow.parquet

    with fs.open(fs_path(uri), "rb") as handle:
        if uri.lower().endswith(".csv"):
            table = pyarrow.csv.read_csv(handle)
        else:
            table = pyarrow.parquet.read_table(handle)
    if column not in table.column_names:
        raise InputError(
            f"manifest {uri} has no column {column!r} (columns: {', '.join(table.column_names)}); "
            "set input.manifest_column"
        )
    return [normalise(str(value)) for value in table.column(column).to_pylist() if value]


def fetch(fs: fsspec.AbstractFileSystem, uri: str) -> tuple[bytes | None, FailureReason | None, str]:
    """Read one object; an object-level failure becomes a reason and a short detail.

    Transient storage failures (throttling, 5xx, timeouts, connection errors)
    that outlast botocore's retries are raised instead: the task fails and the
    run stays uncommitted and resumable, rather than committing the rows as lost.
    """
    try:
        return bytes(fs.cat_file(fs_path(uri))), None, ""
    except FileNotFoundError:
        return None, FailureReason.NOT_FOUND, "vanished between listing and reading"
    except PermissionError:
        return None, FailureReason.PERMISSION_DENIED, "permission denied"
    except IsADirectoryError:
        return None, FailureReason.UNREADABLE, "is a directory"
    except Exception as exc:
        if not is_object_error(exc):
            raise
        return None, FailureReason.UNREADABLE, describe(exc)[:200]


def _botocore_errors() -> tuple[type[BaseException], ...]:
    """``(BotoCoreError, ClientError)`` where botocore is installed (it comes with s3fs)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - only S3 needs botocore
        return ()
    return (BotoCoreError, ClientError)


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the storage layer (I/O, botocore), not from our code."""
    return isinstance(exc, (OSError, *_botocore_errors()))


def _response_code(exc: BaseException) -> tuple[str, int]:
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
    code, status = _response_code(exc)
    if code or status:
        return code in TRANSIENT_CODES or status >= HTTP_SERVER_ERROR or status in RETRYABLE_STATUS
    botocore = _botocore_errors()
    if botocore and isinstance(exc, botocore[0]):  # BotoCoreError: connection, timeout, protocol
        return not type(exc).__name__.startswith(("NoCredentials", "PartialCredentials", "NoRegion"))
    return isinstance(exc, OSError) and exc.errno in (errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET)


def is_object_error(exc: BaseException) -> bool:
    """Whether a failed read concerns the object itself (its row's problem), not the storage service."""
    if not is_storage_error(exc) or is_transient(exc):
        return False
    _, status = _response_code(exc)
    if status:
        return HTTP_CLIENT_ERROR <= status < HTTP_SERVER_ERROR
    botocore = _botocore_errors()
    return not (botocore and isinstance(exc, botocore[0]))


def redact_url(text: str) -> str:
    """Remove ``user:password@`` from any URL in ``text``."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def scrub(text: str) -> str:
    """``text`` without URL credentials or the secret values present in the environment."""
    from pipeline.logs import REDACTED, secret_values

    text = redact_url(text)
    for secret in secret_values(os.environ):
        text = text.replace(secret, REDACTED)
    return text


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
    """Turn failures of the wrapped storage calls (not ``FileNotFoundError``) into StorageError."""
    try:
        yield
    except (PipelineError, FileNotFoundError):
        raise
    except Exception as exc:
        raise storage_error(action, uri, exc, storage) from exc
