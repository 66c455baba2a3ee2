"""Writes that are all or nothing, or happen only if nothing is there yet, locally and on S3.

:func:`write_atomic` replaces a file at once (``_SUCCESS``, ``_run.json``, summaries, lease
renewals): a reader sees all of it or none, and a full disk leaves the previous version.
:func:`create_exclusive` creates a file only if the name is free (the lease's epochs): of two
jobs racing for a name, exactly one wins. Locally both go through a complete temporary file
beside the name (``.<name>.<random>.tmp``); on S3 each is one PUT.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import StorageError
from pipeline.ops.redaction import redact_url
from pipeline.storage.failures import HTTP_PRECONDITION_FAILED, response_code
from pipeline.storage.uris import S3_SCHEMES, fs_path, is_remote, scheme_of

if TYPE_CHECKING:
    import fsspec

TEMP_SUFFIX = ".tmp"  # files being written: ".<name>.<random>.tmp" beside their final name


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
        if scheme not in S3_SCHEMES:
            raise StorageError(
                f"cannot lease an output on {scheme}:// ({redact_url(uri)}): the single-writer lease "
                "needs an exclusive create, which this pipeline implements for local paths and s3://"
            )
        try:
            fs.pipe_file(fs_path(uri), data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            if response_code(exc)[1] == HTTP_PRECONDITION_FAILED or "Precondition" in str(exc):
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
