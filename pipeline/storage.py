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
import posixpath
import stat
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError, PipelineError, StorageError
from pipeline.redaction import redact_url, scrub
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
HTTP_PRECONDITION_FAILED = 412
HTTP_RANGE_NOT_SATISFIABLE = 416
RETRYABLE_STATUS = frozenset({408, 429})


def is_remote(uri: str) -> bool:
    """True for ``scheme://`` URIs other than ``file://``."""
    return "://" in uri and not uri.startswith("file://")


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


def resolve_entry(uri: str, base: str | None) -> str:
    """Where to read an input: a relative manifest entry is read beside the manifest."""
    if base is None or "://" in uri or uri.startswith("/"):
        return uri
    return posixpath.join(base, uri)


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


MAX_NAMED_INPUTS = 5
READ_CHUNK_BYTES = 1 << 20
LOCAL_SCHEMES = ("", "file")
READABLE_REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs")
TEMP_SUFFIX = ".tmp"  # files being written: ".<name>.<random>.tmp" beside their final name
EXCLUSIVE_CREATE_SCHEMES = ("s3", "s3a")


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a durable temporary file beside ``path``; return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(fs: fsspec.AbstractFileSystem, uri: str, data: bytes) -> None:
    """Replace the file at ``uri`` with ``data`` at once: a reader sees all of it or none.

    Local: a temporary file beside it, fsync, then a rename over the name (a full disk
    fails the write and leaves the old file, never a short one). Object stores: one PUT,
    which is atomic by itself.
    """
    if is_remote(uri):
        fs.pipe_file(fs_path(uri), data)
        return
    path = Path(fs_path(uri))
    temp = _write_temp(path, data)
    try:
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def create_exclusive(fs: fsspec.AbstractFileSystem, uri: str, data: bytes) -> bool:
    """Create ``uri`` holding ``data`` only if nothing is there; False if something is.

    Local: a complete temporary file hard-linked to the name (``link`` fails if the name
    exists, and nobody sees a half-written file). S3: a PUT with ``If-None-Match: *``.
    """
    if is_remote(uri):
        scheme = scheme_of(uri)
        if scheme not in EXCLUSIVE_CREATE_SCHEMES:
            raise StorageError(
                f"cannot lease an output on {scheme}:// ({redact_url(uri)}): the single-writer lease "
                "needs an exclusive create, which this pipeline implements for local paths and s3://"
            )
        try:
            fs.pipe_file(fs_path(uri), data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            if _response_code(exc)[1] == HTTP_PRECONDITION_FAILED or "Precondition" in str(exc):
                return False
            raise
        return True
    path = Path(fs_path(uri))
    temp = _write_temp(path, data)
    try:
        path.hardlink_to(temp)
    except FileExistsError:
        return False
    finally:
        temp.unlink()
    _fsync_dir(path.parent)
    return True


def row_id(uri: str) -> str:
    """Stable id of an input: the same URI gives the same id on every run."""
    return hashlib.sha256(uri.encode()).hexdigest()[:ROW_ID_HEX_CHARS]


@dataclass(frozen=True)
class Listing:
    """The inputs of a run, in a stable order, each URI as the user gave it."""

    uris: list[str]
    empty_cells: int = 0  # blank cells of a manifest's URI column, skipped

    def __len__(self) -> int:
        return len(self.uris)


def _with_scheme(uri: str, path: str) -> str:
    return f"{uri.split('://', 1)[0]}://{path}" if is_remote(uri) else path


def list_inputs(source: InputConfig, storage: StorageConfig) -> Listing:
    """Find every input: walk a directory or prefix, or read a manifest's URI column."""
    uri = normalise(source.uri)
    fs = fsspec_filesystem(uri, storage)
    empty = 0
    try:
        if source.is_manifest:
            uris, empty = _read_manifest(uri, source.manifest_column, fs)
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
    return Listing(uris, empty)


def _walk(uri: str, fs: fsspec.AbstractFileSystem, source: InputConfig) -> list[str]:
    root = fs_path(uri)
    if not fs.isdir(root):
        if fs.exists(root):
            raise InputError(f"input {uri} is a file; give a directory, a prefix or a .parquet/.csv manifest")
        raise FileNotFoundError(root)
    paths = fs.find(root, maxdepth=None if source.recursive else 1)
    suffixes = tuple(source.extensions)
    return sorted(_with_scheme(uri, path) for path in paths if path.lower().endswith(suffixes))


def _read_manifest(uri: str, column: str, fs: fsspec.AbstractFileSystem) -> tuple[list[str], int]:
    """The manifest's URIs exactly as written, and how many of its cells were blank."""
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
    values = [None if value is None else str(value) for value in table.column(column).to_pylist()]
    uris = [value for value in values if value is not None and value.strip()]
    return uris, len(values) - len(uris)


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on reading one input, so no input can hang or blow up a worker."""

    max_bytes: int
    timeout_s: float
    allowed_roots: tuple[str, ...] = ()  # real paths; empty: local inputs may be anywhere


class Filesystems:
    """One fsspec filesystem per URI scheme (with the configured endpoint), made on first use.

    Each row is read through the filesystem of its own scheme, so a manifest mixing
    local paths and ``s3://`` URIs reads each from where it is.
    """

    def __init__(self, storage: StorageConfig) -> None:
        self.storage = storage
        self._made: dict[str, fsspec.AbstractFileSystem] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage, "_made": {}}  # workers make their own clients

    def for_scheme(self, scheme: str) -> fsspec.AbstractFileSystem:
        """The filesystem serving ``scheme://`` URIs."""
        if scheme not in self._made:
            self._made[scheme] = fsspec_filesystem(f"{scheme}://x", self.storage)
        return self._made[scheme]


class _RefusedError(Exception):
    """An input this pipeline will not or cannot read: its row's reason and detail."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def fetch(
    filesystems: Filesystems, uri: str, limits: ReadLimits, base: str | None = None
) -> tuple[bytes | None, FailureReason | None, str]:
    """Read one input; an input-level failure becomes a reason and a short detail.

    Transient storage failures (throttling, 5xx, timeouts, connection errors)
    that outlast botocore's retries are raised instead: the task fails and the
    run stays uncommitted and resumable, rather than committing the rows as lost.
    """
    try:
        data = _read(filesystems, uri, limits, base)
    except _RefusedError as refused:
        return None, refused.reason, refused.detail
    except FileNotFoundError:
        return None, FailureReason.NOT_FOUND, "vanished between listing and reading"
    except PermissionError:
        return None, FailureReason.PERMISSION_DENIED, "permission denied"
    except IsADirectoryError:
        return None, FailureReason.UNREADABLE, "is a directory"
    return data, None, ""


def _read(filesystems: Filesystems, uri: str, limits: ReadLimits, base: str | None) -> bytes:
    """The input's bytes through its own scheme's filesystem, or :class:`_RefusedError`."""
    if "\x00" in uri:
        raise _RefusedError(FailureReason.INVALID_URI, "contains a NUL byte")
    target = resolve_entry(uri, base)
    scheme = scheme_of(target)
    if scheme in LOCAL_SCHEMES:
        data = _read_local(target.removeprefix("file://"), limits)
    elif scheme in READABLE_REMOTE_SCHEMES:
        data = _read_remote(filesystems.for_scheme(scheme), target, limits)
    else:
        raise _RefusedError(
            FailureReason.UNSUPPORTED_SCHEME, f"{scheme}:// inputs are not read by this pipeline"
        )
    if len(data) > limits.max_bytes:
        raise _RefusedError(FailureReason.TOO_LARGE, f"over preprocess.max_input_bytes={limits.max_bytes}")
    return data


def _read_remote(fs: fsspec.AbstractFileSystem, uri: str, limits: ReadLimits) -> bytes:
    """At most ``max_bytes + 1`` bytes of an object (one ranged GET)."""
    try:
        return bytes(fs.cat_file(fs_path(uri), start=0, end=limits.max_bytes + 1))
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:
        code, status = _response_code(exc)
        if code == "InvalidRange" or status == HTTP_RANGE_NOT_SATISFIABLE:
            return b""  # a ranged GET of an empty object: the object is empty, not unreadable
        if not is_object_error(exc):
            raise
        raise _RefusedError(FailureReason.UNREADABLE, describe(exc)[:200]) from exc


_FILE_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


def _read_local(path: str, limits: ReadLimits) -> bytes:
    """At most ``max_bytes + 1`` bytes of a regular file; never blocks on a FIFO or a device."""
    real = os.path.realpath(path)
    roots = limits.allowed_roots
    if roots and not any(real == root or real.startswith(root + os.sep) for root in roots):
        raise _RefusedError(FailureReason.OUTSIDE_ALLOWED_ROOTS, "outside input.allowed_roots")
    try:  # O_NONBLOCK: opening a FIFO does not wait for a writer
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:
        raise _RefusedError(FailureReason.UNREADABLE, describe(exc)) from exc
    try:
        return _read_regular(fd, limits)
    except IsADirectoryError:
        raise
    except OSError as exc:
        raise _RefusedError(FailureReason.UNREADABLE, describe(exc)) from exc
    finally:
        os.close(fd)


def _read_regular(fd: int, limits: ReadLimits) -> bytes:
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError
    if not stat.S_ISREG(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "special file")
        raise _RefusedError(FailureReason.NOT_A_REGULAR_FILE, f"is a {kind}, not a regular file")
    if info.st_size > limits.max_bytes:
        detail = f"{info.st_size} bytes, over preprocess.max_input_bytes={limits.max_bytes}"
        raise _RefusedError(FailureReason.TOO_LARGE, detail)
    os.set_blocking(fd, True)
    chunks, left = [], limits.max_bytes + 1
    while left > 0 and (chunk := os.read(fd, min(left, READ_CHUNK_BYTES))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def fetch_all(
    filesystems: Filesystems, uris: list[str], limits: ReadLimits, threads: int, base: str | None = None
) -> list[tuple[bytes | None, FailureReason | None, str]]:
    """Fetch ``uris`` on a thread pool; a read still running after its time is its row's ``timeout``.

    A hung read (a stuck network filesystem) keeps its thread, but never the batch: the
    others finish, and the pool is left without waiting for it.
    """
    threads = min(threads, max(1, len(uris)))
    pool = ThreadPoolExecutor(max_workers=threads)
    futures = [pool.submit(fetch, filesystems, uri, limits, base) for uri in uris]
    rounds = -(-len(uris) // threads)  # each thread reads this many inputs one after another
    wait(futures, timeout=limits.timeout_s * rounds)
    pool.shutdown(wait=False, cancel_futures=True)
    late = (
        None,
        FailureReason.TIMEOUT,
        f"no answer within {limits.timeout_s:g}s (preprocess.max_read_seconds)",
    )
    return [future.result() if future.done() and not future.cancelled() else late for future in futures]


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
