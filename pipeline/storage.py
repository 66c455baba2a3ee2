"""Filesystems, input listing and byte fetching, for local paths and object storage.

One fsspec filesystem per URI scheme, built from :class:`StorageConfig`. S3
credentials come only from the standard AWS chain (environment, profile, web
identity / IRSA): the config has no credential fields, so none can leak into
logs or the manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError, StorageError
from pipeline.schema import FailureReason

if TYPE_CHECKING:
    import fsspec
    import pyarrow.fs

    from pipeline.config import InputConfig, StorageConfig

ROW_ID_HEX_CHARS = 20


def is_remote(uri: str) -> bool:
    """True for ``scheme://`` URIs other than ``file://``."""
    return "://" in uri and not uri.startswith("file://")


def normalise(uri: str) -> str:
    """Local paths become absolute; remote URIs stay as given, without a trailing slash."""
    if is_remote(uri):
        return uri.rstrip("/")
    return str(Path(uri.removeprefix("file://")).expanduser().resolve())


def storage_options(storage: StorageConfig) -> dict[str, Any]:
    """fsspec options for S3; retries use botocore's adaptive mode (handles 503 SlowDown)."""
    client_kwargs: dict[str, Any] = {}
    if storage.endpoint_url:
        client_kwargs["endpoint_url"] = storage.endpoint_url
    if storage.region:
        client_kwargs["region_name"] = storage.region
    return {
        "anon": storage.anonymous,
        "client_kwargs": client_kwargs,
        "config_kwargs": {
            "retries": {"max_attempts": storage.max_attempts, "mode": "adaptive"},
            "connect_timeout": storage.connect_timeout_s,
            "read_timeout": storage.read_timeout_s,
        },
        "retries": storage.max_attempts,
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
    except OSError as exc:
        raise StorageError(f"input {uri} cannot be listed: {type(exc).__name__}: {exc}") from exc
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
    """Read one object; a failure becomes a reason and a short detail, never an exception."""
    try:
        return bytes(fs.cat_file(fs_path(uri))), None, ""
    except FileNotFoundError:
        return None, FailureReason.NOT_FOUND, "vanished between listing and reading"
    except PermissionError:
        return None, FailureReason.PERMISSION_DENIED, "permission denied"
    except IsADirectoryError:
        return None, FailureReason.UNREADABLE, "is a directory"
    except OSError as exc:
        return None, FailureReason.UNREADABLE, f"{type(exc).__name__}: {exc}"[:200]
