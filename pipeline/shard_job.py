"""The driver's part of a run over shards: what to read, and the check before the commit.

The driver never holds the records: it holds the shard list, reads Parquet footers (the
carried columns' types, the record count progress is shown against), and hands one read
task per unfinished shard to Ray Data (:class:`~pipeline.shard_read.ShardDatasource`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline import shard_verify, storage
from pipeline.errors import InputError
from pipeline.shards import ReadSpec

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.output import OutputLocation
    from pipeline.shard_read import ShardDatasource
    from pipeline.verify import Tally


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


def restore(
    config: Config, location: OutputLocation, uris: list[str], kind: str, run_id: str
) -> tuple[ShardDatasource | None, int, int]:
    """The read of the shards still to do (None: every record is written), rows written, records to do."""
    from pipeline.shard_read import ShardDatasource

    todo, done = shard_verify.restore(location, uris, run_id)
    if not todo:
        return None, done, 0
    carried, records = survey(config, kind, [shard.uri for shard in todo])
    spec = replace(ReadSpec.of(config.input, kind, config.storage, location.uri), carried=carried)
    skipped = sum(len(shard.skip) for shard in todo)
    return ShardDatasource(todo, spec), done, max(0, records - skipped)


def tally(config: Config, location: OutputLocation, uris: list[str]) -> Tally:
    """Prove every record of every shard is written once (:func:`pipeline.shard_verify.tally`)."""
    return shard_verify.tally(location, config.storage, uris, config.input.passthrough_columns)
