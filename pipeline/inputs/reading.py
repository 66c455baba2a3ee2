"""Reading each input's bytes in a decode worker: bounded, and refusals become row reasons.

:func:`fetch_all` reads a batch on a thread pool; :func:`fetch` reads one input within
:class:`ReadLimits` (size, time, allowed roots and schemes) through its own scheme's
filesystem from :class:`~pipeline.storage.Filesystems`, a relative manifest entry beside the
manifest (:func:`resolve_entry`); ``http(s)://`` entries through :mod:`pipeline.inputs.http_fetch`.
Local files are opened ``O_NONBLOCK`` and checked with ``fstat``, so a FIFO or a device is
refused, never waited on; objects are read with one ranged GET of at most ``max_bytes + 1``
bytes. An input this pipeline will not or cannot read (missing, denied, too large, a special
file, outside the allowed roots, a scheme not read or not allowed, too slow, an HTTP error;
:func:`is_object_error`) becomes its row's :class:`~pipeline.schema.FailureReason` and a short
detail. A transient object-store failure (:func:`pipeline.storage.is_transient`) is raised
instead: the task fails and the run stays uncommitted and resumable. HTTP URLs are the
exception: each names its own server, which one job cannot wait for, so once its retries are
spent a URL is its row's ``http_error`` or ``timeout``.
"""

from __future__ import annotations

import os
import posixpath
import stat
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline import storage
from pipeline.config import DEFAULT_ALLOWED_SCHEMES
from pipeline.inputs import http_fetch
from pipeline.schema import FailureReason

if TYPE_CHECKING:
    import fsspec

READ_CHUNK_BYTES = 1 << 20
READABLE_REMOTE_SCHEMES = (*storage.S3_SCHEMES, "gs", "gcs", "az", "abfs")
HTTP_CLIENT_ERROR = 400
HTTP_RANGE_NOT_SATISFIABLE = 416

Fetched = tuple[bytes | None, FailureReason | None, str]  # bytes, or a reason and a detail


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on reading one input, so no input can hang or blow up a worker, or reach too far."""

    max_bytes: int
    timeout_s: float
    allowed_roots: tuple[str, ...] = ()  # real paths; empty: local inputs may be anywhere
    allowed_schemes: tuple[str, ...] = DEFAULT_ALLOWED_SCHEMES  # "local" for plain paths
    http: http_fetch.HttpSettings = http_fetch.DEFAULT_SETTINGS
    # Listed names that are not valid UTF-8, as listed (\xNN escapes): not their files' names.
    unreadable_names: frozenset[str] = frozenset()


def resolve_entry(uri: str, base: str | None) -> str:
    """Where to read an input: a relative manifest entry is read beside the manifest (``base``)."""
    if base is None or "://" in uri or uri.startswith("/"):
        return uri
    return posixpath.join(base, uri)


def is_object_error(exc: BaseException) -> bool:
    """Whether a failed read concerns the object itself (its row's problem), not the storage service."""
    if not storage.is_storage_error(exc) or storage.is_transient(exc):
        return False
    _, status = storage.response_code(exc)
    if status:
        return HTTP_CLIENT_ERROR <= status < storage.HTTP_SERVER_ERROR
    botocore = storage.botocore_errors()
    return not (botocore and isinstance(exc, botocore[0]))


class _RefusedError(Exception):
    """An input this pipeline will not or cannot read: its row's reason and detail."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def fetch(filesystems: storage.Filesystems, uri: str, limits: ReadLimits, base: str | None = None) -> Fetched:
    """Read one input; an input-level failure becomes a reason and a short detail.

    Transient storage failures (throttling, 5xx, timeouts, connection errors)
    that outlast botocore's retries are raised instead: the task fails and the
    run stays uncommitted and resumable, rather than committing the rows as lost.
    """
    try:
        data = _read(filesystems, uri, limits, base)
    except (_RefusedError, http_fetch.HttpRefusedError) as refused:
        return None, refused.reason, refused.detail
    except FileNotFoundError:
        return None, FailureReason.NOT_FOUND, "vanished between listing and reading"
    except PermissionError:
        return None, FailureReason.PERMISSION_DENIED, "permission denied"
    except IsADirectoryError:
        return None, FailureReason.UNREADABLE, "is a directory"
    return data, None, ""


def fetch_all(
    filesystems: storage.Filesystems,
    uris: list[str],
    limits: ReadLimits,
    threads: int,
    base: str | None = None,
) -> list[Fetched]:
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


def _read(filesystems: storage.Filesystems, uri: str, limits: ReadLimits, base: str | None) -> bytes:
    """The input's bytes through its own scheme's filesystem, or :class:`_RefusedError`."""
    if "\x00" in uri:
        raise _RefusedError(FailureReason.INVALID_URI, "contains a NUL byte")
    if uri in limits.unreadable_names:
        raise _RefusedError(
            FailureReason.INVALID_URI,
            "the file name is not valid UTF-8 (its bytes shown as \\xNN): rename the file to read it",
        )
    target = resolve_entry(uri, base)
    scheme = storage.scheme_of(target)
    if scheme not in (*storage.LOCAL_SCHEMES, *READABLE_REMOTE_SCHEMES, *http_fetch.HTTP_SCHEMES):
        raise _RefusedError(
            FailureReason.UNSUPPORTED_SCHEME, f"{scheme}:// inputs are not read by this pipeline"
        )
    if (scheme or "local") not in limits.allowed_schemes:
        shown = f"{scheme}://" if scheme else "local paths"
        raise _RefusedError(FailureReason.SCHEME_NOT_ALLOWED, f"{shown} not in input.allowed_schemes")
    if scheme in storage.LOCAL_SCHEMES:
        data = _read_local(target.removeprefix("file://"), limits)
    elif scheme in http_fetch.HTTP_SCHEMES:
        data = http_fetch.fetch_url(
            target, limits.http, limits.allowed_schemes, limits.max_bytes, limits.timeout_s
        )
    else:
        data = _read_remote(filesystems.for_scheme(scheme), target, limits)
    if len(data) > limits.max_bytes:
        raise _RefusedError(FailureReason.TOO_LARGE, f"over preprocess.max_input_bytes={limits.max_bytes}")
    return data


def _read_remote(fs: fsspec.AbstractFileSystem, uri: str, limits: ReadLimits) -> bytes:
    """At most ``max_bytes + 1`` bytes of an object (one ranged GET)."""
    try:
        return bytes(fs.cat_file(storage.fs_path(uri), start=0, end=limits.max_bytes + 1))
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:
        code, status = storage.response_code(exc)
        if code == "InvalidRange" or status == HTTP_RANGE_NOT_SATISFIABLE:
            return b""  # a ranged GET of an empty object: the object is empty, not unreadable
        if not is_object_error(exc):
            raise
        raise _RefusedError(FailureReason.UNREADABLE, storage.describe(exc)[:200]) from exc


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
        raise _RefusedError(FailureReason.UNREADABLE, storage.describe(exc)) from exc
    try:
        return _read_regular(fd, limits)
    except IsADirectoryError:
        raise
    except OSError as exc:
        raise _RefusedError(FailureReason.UNREADABLE, storage.describe(exc)) from exc
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
