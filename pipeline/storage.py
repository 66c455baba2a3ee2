"""Storage for local paths and object stores: URIs, filesystems, listing, errors.

One fsspec filesystem per URI scheme, from :class:`StorageConfig` (S3 credentials only from
the AWS chain, so none reach logs or the manifest; S3's bounded and counted by
:mod:`pipeline.s3_client`); :class:`Filesystems` go to the decode workers, which read inputs
with :mod:`pipeline.reading` (within its ``ReadLimits``). Writes that are all or nothing, or
only if absent, are :mod:`pipeline.atomic_writes`. Transient failures
(:func:`is_transient`, and :data:`RETRIED_IO_ERRORS` as Ray Data matches them) are retried by
botocore, then raised: the job fails and can be resumed, rather than committing rows lost to an
outage. Object-level ones become a row's failure reason. Errors name the URI and endpoint, never
a credential.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError, PipelineError, StorageError
from pipeline.input_checks import SHARD_SUFFIXES, detect_format
from pipeline.redaction import redact_url, scrub

if TYPE_CHECKING:
    from collections.abc import Iterator

    import fsspec
    import pyarrow as pa

    from pipeline.config import InputConfig, StorageConfig

ROW_ID_HEX_CHARS = 20
MAX_NAMED_INPUTS = 5
RETRY_MODE = "standard"
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
    "storage.call_timeout_s",  # pipeline.s3_client's deadline: a part write the store never answered
)
LOCAL_SCHEMES = ("", "file")
S3_SCHEMES = ("s3", "s3a")  # served by s3fs with storage_options; exclusive create supported


def is_remote(uri: str) -> bool:
    """True for ``scheme://`` URIs other than ``file://``: read through an fsspec client, not the OS."""
    return scheme_of(uri) not in LOCAL_SCHEMES


def normalise(uri: str) -> str:
    """Local paths become absolute (``..`` folded, symlinks kept); remote URIs lose a trailing slash."""
    if is_remote(uri):
        return uri.rstrip("/")
    return os.path.abspath(Path(uri.removeprefix("file://")).expanduser())  # noqa: PTH100  # resolve() follows symlinks


def scheme_of(uri: str) -> str:
    """``s3``, ``https``, ... of a URI; ``""`` for a plain local path, ``file`` for ``file://``."""
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def manifest_base(source: InputConfig) -> str | None:
    """The folder a manifest's relative entries are read from (the manifest's own); None for a listing."""
    if not source.is_manifest:
        return None
    return posixpath.dirname(normalise(source.uri))


def storage_options(storage: StorageConfig) -> dict[str, Any]:
    """Options for fsspec's S3 filesystem: endpoint, region, timeouts and botocore's retries.

    Retries: botocore's ``standard`` mode (backoff with jitter on throttling, 5xx, timeouts and
    refused connections), ``max_attempts`` tries per request. Listings are never cached (Ray
    workers write under the same prefixes). No credentials: botocore finds them itself.
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
        "call_timeout_s": storage.call_timeout_s,  # pipeline.s3_client: every request, retries included
    }


def fsspec_filesystem(uri: str, storage: StorageConfig, retry_sink: Any = None) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem that serves ``uri``; S3's bounded and counting (:mod:`pipeline.s3_client`).

    ``retry_sink``: where an S3 filesystem reports its retries (the run's progress tracker).
    """
    import fsspec

    if not is_remote(uri):
        return fsspec.filesystem("file")
    protocol = uri.split("://", 1)[0]
    try:
        if protocol in S3_SCHEMES:
            from pipeline.s3_client import BoundedS3FileSystem

            return BoundedS3FileSystem(**storage_options(storage), retry_sink=retry_sink)
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"no filesystem for {protocol}:// URIs: {exc}") from exc


def fs_path(uri: str) -> str:
    """The path part fsspec and pyarrow expect (``bucket/key`` for S3)."""
    return uri.split("://", 1)[1] if is_remote(uri) else uri


class Filesystems:
    """One fsspec filesystem per URI scheme (with the configured endpoint), made on first use.

    Each row is read through the filesystem of its own scheme, so a manifest mixing
    local paths and ``s3://`` URIs reads each from where it is.
    """

    def __init__(self, storage: StorageConfig, retry_sink: Any = None) -> None:
        self.storage = storage
        self.retry_sink = retry_sink  # where S3 retries are reported (the run's progress tracker)
        self._made: dict[str, fsspec.AbstractFileSystem] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage, "retry_sink": self.retry_sink, "_made": {}}  # workers make their own

    def for_scheme(self, scheme: str) -> fsspec.AbstractFileSystem:
        """The filesystem serving ``scheme://`` URIs."""
        if scheme not in self._made:
            self._made[scheme] = fsspec_filesystem(f"{scheme}://x", self.storage, self.retry_sink)
        return self._made[scheme]


def row_id(uri: str) -> str:
    """Stable id of an input: the same URI gives the same id on every run."""
    return hashlib.sha256(uri.encode()).hexdigest()[:ROW_ID_HEX_CHARS]


@dataclass(frozen=True)
class Listing:
    """The inputs of a run, in a stable order, each URI as the user gave it."""

    uris: list[str]
    empty_cells: int = 0  # blank cells of a manifest's URI column, skipped
    carried: pa.Table | None = None  # input.passthrough_columns, one row per URI (input_manifest)
    format: str = "files"  # or the shards' format: the URIs are then shards (pipeline.shards)
    # A folder's or prefix's: each URI's (size, version), the version being the object's ETag
    # or the file's modification time; compared when the run resumes (pipeline.run_inputs).
    stamps: list[tuple[int, str]] | None = None
    # Local files whose names are not valid UTF-8, listed with \xNN for those bytes: read as
    # that text they would not be found, so each is a failed row (invalid_uri), never read.
    unreadable_names: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.uris)


def list_inputs(source: InputConfig, storage: StorageConfig) -> Listing:
    """Find every input: walk a directory or prefix, or read a manifest's URI column (and carried ones)."""
    from pipeline.input_manifest import read_manifest  # pyarrow: loaded only to read a manifest

    uri = normalise(source.uri)
    fs = fsspec_filesystem(uri, storage)
    empty, carried, walked, escaped = 0, None, None, frozenset[str]()
    kind: str = source.format if source.is_sharded else "files"
    try:
        if source.is_manifest:
            uris, empty, carried = read_manifest(
                uri, fs_path(uri), source.manifest_column, fs, source.passthrough_columns
            )
        else:
            walked, kind, escaped = _walk(uri, fs, source)
            uris = list(walked)
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
        carried = carried.slice(0, source.limit) if carried is not None else None
    stamps = [walked[uri] for uri in uris] if walked is not None else None
    if not uris:
        raise InputError(
            f"no inputs found at {uri} (extensions {', '.join(source.extensions)}, "
            f"recursive={source.recursive}{f', {empty} empty manifest cells' if empty else ''})"
        )
    repeated = [item for item, count in Counter(uris).items() if count > 1]
    if repeated:
        named = ", ".join(redact_url(item) for item in repeated[:MAX_NAMED_INPUTS])
        more = f" and {len(repeated) - MAX_NAMED_INPUTS} more" if len(repeated) > MAX_NAMED_INPUTS else ""
        raise InputError(
            f"input manifest {uri} lists {len(repeated)} URIs more than once ({named}{more}); "
            "each input must appear once, so its output row is unambiguous"
        )
    return Listing(uris, empty, carried, kind, stamps, escaped.intersection(uris))


def _stamp(info: dict[str, Any]) -> tuple[int, str]:
    """What a listing says of a file: its size and version (an object's ETag, else the modification time)."""
    return int(info.get("size") or 0), str(info.get("ETag") or info.get("mtime") or "")


def printable_name(path: str) -> str:
    r"""``path``, or if it is not valid UTF-8 (a local name's raw bytes), with ``\xNN`` for those bytes."""
    try:
        path.encode()
    except UnicodeEncodeError:  # os.listdir gives undecodable bytes as surrogates
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def _walk(
    uri: str, fs: fsspec.AbstractFileSystem, source: InputConfig
) -> tuple[dict[str, tuple[int, str]], str, frozenset[str]]:
    """The files (or shards) under ``uri``, sorted, each with its stamp; their format (given, or detected).

    Also the names that are not valid UTF-8, as listed (:func:`printable_name`).
    """
    root = fs_path(uri)
    if not fs.isdir(root):
        if source.is_sharded and fs.exists(root):  # one shard
            return {uri: _stamp(fs.info(root))}, source.format, frozenset()
        if fs.exists(root):
            raise InputError(f"input {uri} is a file; give a directory, a prefix or a .parquet/.csv manifest")
        raise FileNotFoundError(root)
    scheme = uri.split("://", 1)[0] + "://" if is_remote(uri) else ""  # fsspec drops it from the paths
    found = fs.find(root, maxdepth=None if source.recursive else 1, detail=True)
    entries = {printable_name(scheme + path): _stamp(info) for path, info in found.items()}
    escaped = frozenset(printable_name(scheme + path) for path in found) - {scheme + path for path in found}
    kind = source.format if source.format != "auto" else detect_format(list(entries), source.extensions, uri)
    suffixes = tuple(source.extensions) if kind == "files" else SHARD_SUFFIXES[kind]
    listed = {path: entries[path] for path in sorted(entries) if path.lower().endswith(suffixes)}
    return listed, kind, escaped


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
