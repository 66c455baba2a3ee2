"""Listing a run's inputs: a folder or prefix walked, or a manifest read; what ``input.format: auto`` finds.

The listing is the driver's only look at the inputs: URIs in a stable order, as the user gave
them, with a folder's or prefix's stamps (size and version) that a resume compares
(:mod:`pipeline.inputs.fingerprints`). No byte of an image is read here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import InputError
from pipeline.storage import fs_path, fsspec_filesystem, is_remote, is_storage_error, normalise, storage_error

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.config import InputConfig
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.ops.redaction import redact_url

if TYPE_CHECKING:
    import fsspec
    import pyarrow as pa

    from pipeline.config import InputConfig, StorageConfig


SHARD_SUFFIXES = {"parquet": (".parquet",), "webdataset": (".tar",)}


def detect_format(paths: Sequence[str], extensions: Sequence[str], uri: str) -> str:
    """``input.format: auto``: files when only images are there, a shard format when only its shards are.

    A folder holding two kinds is refused rather than guessed.
    """
    found = {"files": tuple(extensions), **SHARD_SUFFIXES}
    kinds = [kind for kind, suffixes in found.items() if any(p.lower().endswith(suffixes) for p in paths)]
    if len(kinds) > 1:
        raise InputError(
            f"input {uri} holds {' and '.join(kinds)} alike; set input.format to the one to read"
        )
    return kinds[0] if kinds else "files"


MAX_NAMED_INPUTS = 5


def manifest_base(source: InputConfig) -> str | None:
    """The folder a manifest's relative entries are read from (the manifest's own); None for a listing."""
    if not source.is_manifest:
        return None
    return posixpath.dirname(normalise(source.uri))


@dataclass(frozen=True)
class Listing:
    """The inputs of a run, in a stable order, each URI as the user gave it."""

    uris: list[str]
    empty_cells: int = 0  # blank cells of a manifest's URI column, skipped
    carried: pa.Table | None = None  # input.passthrough_columns, one row per URI (input_manifest)
    format: str = "files"  # or the shards' format: the URIs are then shards (pipeline.inputs.shards)
    # A folder's or prefix's: each URI's (size, version), the version being the object's ETag
    # or the file's modification time; compared when the run resumes (pipeline.inputs.fingerprints).
    stamps: list[tuple[int, str]] | None = None
    # Local files whose names are not valid UTF-8, listed with \xNN for those bytes: read as
    # that text they would not be found, so each is a failed row (invalid_uri), never read.
    unreadable_names: frozenset[str] = frozenset()
    # A manifest's input.version_column, row for row with the URIs (None where a cell is empty):
    # its entries' fingerprints (pipeline.inputs.fingerprints). None: no such column.
    versions: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.uris)


def list_inputs(source: InputConfig, storage: StorageConfig) -> Listing:
    """Find every input: walk a directory or prefix, or read a manifest's URI column (and carried ones)."""
    uri = normalise(source.uri)
    fs = fsspec_filesystem(uri, storage)
    empty, carried, walked, escaped, versions = 0, None, None, frozenset[str](), None
    kind: str = source.format if source.is_sharded else "files"
    try:
        if source.is_manifest:
            uris, empty, carried, versions = _read_manifest(uri, fs, source)
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
        versions = versions[: source.limit] if versions is not None else None
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
    return Listing(uris, empty, carried, kind, stamps, escaped.intersection(uris), versions)


def _read_manifest(
    uri: str, fs: fsspec.AbstractFileSystem, source: InputConfig
) -> tuple[list[str], int, pa.Table | None, list[str | None] | None]:
    """A manifest's URIs, blank URI cells, carried columns, and its version column's cells as text."""
    from pipeline.inputs.manifest import read_manifest  # pyarrow: loaded only to read a manifest

    version = source.version_column
    columns = list(source.passthrough_columns)
    if version is None:
        return (*read_manifest(uri, fs_path(uri), source.manifest_column, fs, columns), None)
    extra = version not in columns
    uris, empty, carried = read_manifest(
        uri, fs_path(uri), source.manifest_column, fs, [*columns, version] if extra else columns
    )
    if carried is None:  # not reached: the version column is read
        return uris, empty, None, None
    cells = carried.column(version).to_pylist()
    versions = [None if cell is None or not str(cell).strip() else str(cell) for cell in cells]
    return uris, empty, (carried.drop_columns([version]) if extra else carried) if columns else None, versions


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
