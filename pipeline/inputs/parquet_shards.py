"""Parquet shards: records are rows, the image a binary column (or a Hugging Face image struct)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.inputs.shards import ReadSpec, Shard, ShardDataError, block, image_bytes, shard_name
from pipeline.schema import FailureReason

if TYPE_CHECKING:
    from collections.abc import Iterator


def read_parquet(shard: Shard, spec: ReadSpec, counted: list[int]) -> Iterator[pa.Table]:
    """Blocks of the shard's rows, ``spec.rows_per_block`` at a time; ``counted[0]`` counts them."""
    import pyarrow.parquet as pq

    fs = storage.fsspec_filesystem(shard.uri, spec.storage)
    carried = list(spec.carried.names) if spec.carried is not None else []
    wanted = list(
        dict.fromkeys([spec.image_column, *([spec.key_column] if spec.key_column else []), *carried])
    )
    name = shard_name(shard.uri, spec.root)
    with fs.open(storage.fs_path(shard.uri), "rb") as handle:
        try:
            table_file = pq.ParquetFile(handle)
        except (pa.ArrowInvalid, OSError) as exc:
            if storage.is_transient(exc):
                raise
            raise ShardDataError("not_parquet", storage.describe(exc)) from exc
        names = table_file.schema_arrow.names
        missing = [column for column in wanted if column not in names]
        if missing:
            raise ShardDataError(
                "missing_column", f"no column {', '.join(missing)} (columns: {', '.join(names)})"
            )
        for batch in table_file.iter_batches(batch_size=spec.rows_per_block, columns=wanted):
            start, count = counted[0], batch.num_rows
            indices = [str(start + offset) for offset in range(count)]
            derived = [f"{name}#{index}" for index in indices]
            if spec.key_column:
                given = pc.cast(batch.column(spec.key_column), pa.string()).to_pylist()
                keys = [
                    key if key is not None else fallback for key, fallback in zip(given, derived, strict=True)
                ]
            else:
                keys = derived
            images = image_bytes(batch.column(spec.image_column), spec)
            problems = [
                None if valid else (FailureReason.NO_IMAGE.value, "the image cell is null")
                for valid in images.is_valid().to_pylist()
            ]
            values = None
            if spec.carried is not None:
                selected = pa.Table.from_batches([batch]).select(carried)
                try:
                    selected = selected.cast(spec.carried)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ShardDataError(
                        "carried_type", f"carried columns {selected.schema} not {spec.carried}: {exc}"
                    ) from exc
                values = [tuple(row.values()) for row in selected.to_pylist()]
            counted[0] += count
            yield block(shard, keys, indices, images, problems, values)
