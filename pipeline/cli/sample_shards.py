"""Image files packed into shards: the demo's Parquet and WebDataset samples, tests' and benchmarks' inputs.

Parquet shards hold ``key`` (the file's path, so a run over the shards with
``input.key_column: key`` gives each record the row id the run over the files gives it),
``image`` (the file's bytes), ``name`` and ``size_bytes`` (columns to carry). WebDataset
shards hold, per file, ``<key>.<ext>`` (its bytes), ``<key>.json`` and ``<key>.cls``.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path


def _split(files: Sequence[Path], shards: int) -> list[list[Path]]:
    """``files`` in order, cut into ``shards`` runs of about equal length."""
    size = -(-len(files) // shards)
    return [list(files[start : start + size]) for start in range(0, len(files), size)]


def parquet_shards(
    files: Sequence[Path],
    out: Path,
    shards: int = 3,
    row_group_rows: int = 100,
    key_of: Callable[[Path], str] = str,
) -> list[Path]:
    """Write ``files`` into ``shards`` Parquet files under ``out``; return their paths.

    ``key_of``: each file's key (its path; the URI it has elsewhere, e.g. uploaded to S3).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, group in enumerate(_split(files, shards)):
        table = pa.table(
            {
                "key": [key_of(path) for path in group],
                "image": pa.array([path.read_bytes() for path in group], pa.binary()),
                "name": [path.name for path in group],
                "size_bytes": pa.array([path.stat().st_size for path in group], pa.int64()),
            }
        )
        path = out / f"part-{index:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_rows)
        paths.append(path)
    return paths


def webdataset_key(path: Path) -> str:
    """The WebDataset key a file gets in :func:`webdataset_shards`: its folder and stem, no dots."""
    return f"{path.parent.name}/{path.name.split('.', 1)[0]}"


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    """One regular file member."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def webdataset_shards(files: Sequence[Path], out: Path, shards: int = 3) -> list[Path]:
    """Write ``files`` into ``shards`` WebDataset tars under ``out`` (image, .json, .cls); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, group in enumerate(_split(files, shards)):
        path = out / f"shard-{index:05d}.tar"
        with tarfile.open(path, "w") as archive:
            for number, file in enumerate(group):
                key = webdataset_key(file)
                extension = file.name.split(".", 1)[1] if "." in file.name else "bin"
                add_member(archive, f"{key}.{extension}", file.read_bytes())
                add_member(archive, f"{key}.json", json.dumps({"file": file.name}).encode())
                add_member(archive, f"{key}.cls", str(number % 10).encode())
        paths.append(path)
    return paths
