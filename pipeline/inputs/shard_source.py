"""Reading shards in Ray Data: one read task per shard, records streamed in blocks.

A custom datasource rather than Ray's ``read_parquet``/``read_webdataset``: a shard that is
not what it claims (not Parquet, a truncated tar) must become a shard-level failure, named
in the ledger, not a crashed job; and each task must count its shard's records
(:mod:`pipeline.inputs.shards`). Each block holds ``row_id``, ``uri``, ``shard_index``, the image
bytes, a failure ``reason``/``error`` where the record has no usable image (a null cell, a
member named with ``..``, no image member), and the carried values. Transient storage
errors are raised, so the task is retried or the run stays resumable.

"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.datasource import Datasource, ReadTask

from pipeline import storage
from pipeline.errors import InputError
from pipeline.inputs.parquet_shards import read_parquet
from pipeline.inputs.shards import LedgerEntry, ReadSpec, Shard, ShardDataError, ShardFailure
from pipeline.inputs.webdataset_shards import read_webdataset
from pipeline.schema import FINGERPRINT_FIELD

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.config import Config


class ShardDatasource(Datasource):
    """One read task per shard; each yields blocks of records, then writes the shard's ledger entry."""

    def __init__(self, shards: list[Shard], spec: ReadSpec) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._shards = shards
        self._spec = spec

    def get_name(self) -> str:
        """Name shown in Ray Data's progress and stats."""
        return "ReadShards"

    @property
    def shards(self) -> list[Shard]:
        """The shards to read, each by one task."""
        return self._shards

    def carried_schema(self) -> pa.Schema:
        """The columns the records carry, with their types (empty: none)."""
        return self._spec.carried if self._spec.carried is not None else pa.schema([])

    def estimate_inmemory_data_size(self) -> int | None:
        """Unknown until read: the records stream."""
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        """One task per shard, whatever ``parallelism``: a shard is read by one task, start to end."""
        from ray.data.block import BlockMetadata

        del parallelism, data_context
        tasks = []
        for shard in self._shards:

            def read(shard: Shard = shard, spec: ReadSpec = self._spec) -> Iterator[pa.Table]:
                return read_shard(shard, spec)

            metadata = BlockMetadata(
                num_rows=None, size_bytes=None, input_files=(shard.uri,), exec_stats=None
            )
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks


def read_shard(shard: Shard, spec: ReadSpec) -> Iterator[pa.Table]:
    """Yield the shard's records not yet written, then record how many it holds (and any failure)."""
    reader = read_parquet if spec.format == "parquet" else read_webdataset
    counted = [0]
    failure = None
    try:
        for read in reader(shard, spec, counted):
            block = read
            if shard.skip:
                block = block.filter(pc.invert(pc.is_in(block.column("row_id"), pa.array(list(shard.skip)))))
            if block.num_rows:
                prints = pa.array([shard.fingerprint] * block.num_rows, pa.string())
                yield block.append_column(FINGERPRINT_FIELD.name, prints)
    except ShardDataError as exc:
        failure = ShardFailure(shard.uri, exc.reason, exc.detail)
    except Exception as exc:
        if storage.is_transient(exc):
            raise
        failure = ShardFailure(shard.uri, "unreadable", storage.describe(exc))
    spec.ledger(shard.index, shard.uri, LedgerEntry(counted[0], failure))


def survey(config: Config, kind: str, uris: list[str]) -> tuple[pa.Schema | None, int]:
    """The carried columns' types (None: none carried) and the records the shards hold (0: unknown).

    Parquet: from the footers; the first shard that has every carried column gives their
    types (a shard that cannot be read fails later, in its read task). WebDataset members
    are carried as text.
    """
    names = config.input.passthrough_columns
    if kind != "parquet":
        return (pa.schema([(name, pa.string()) for name in names]) if names else None), 0
    import pyarrow.parquet as pq

    carried, records = None, 0
    filesystems = storage.Filesystems(config.storage)
    for uri in uris:
        try:
            with filesystems.for_scheme(storage.scheme_of(uri) or "file").open(
                storage.fs_path(uri), "rb"
            ) as handle:
                table_file = pq.ParquetFile(handle)
                records += table_file.metadata.num_rows
                schema = table_file.schema_arrow
        except Exception as exc:  # the shard's own read task reports it
            if storage.is_transient(exc):
                raise storage.storage_error("read the footer of", uri, exc, config.storage) from exc
            continue
        if names and carried is None and all(name in schema.names for name in names):
            carried = pa.schema([schema.field(name).remove_metadata() for name in names])
    if names and carried is None:
        raise InputError(
            f"no shard under {config.input.uri} has the columns {', '.join(names)} "
            "(input.passthrough_columns)"
        )
    return carried, records
