"""Reading shards in Ray Data: one read task per shard, records streamed in blocks.

A custom datasource rather than Ray's ``read_parquet``/``read_webdataset``: a shard that is
not what it claims (not Parquet, a truncated tar) must become a shard-level failure, named
in the ledger, not a crashed job; and each task must count its shard's records
(:mod:`pipeline.shards`). Each block holds ``row_id``, ``uri``, ``shard_index``, the image
bytes, a failure ``reason``/``error`` where the record has no usable image (a null cell, a
member named with ``..``, no image member), and the carried values. Transient storage
errors are raised, so the task is retried or the run stays resumable.
"""

from __future__ import annotations

import posixpath
import tarfile
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.datasource import Datasource, ReadTask

from pipeline import output, storage
from pipeline.schema import CARRIED_ROW_COLUMN, RECORD_BYTES_COLUMN, SHARD_INDEX_FIELD, FailureReason
from pipeline.shards import LedgerEntry, ReadSpec, Shard, ShardFailure, pack_carried, shard_name, write_entry

if TYPE_CHECKING:
    from collections.abc import Iterator

WEBDATASET_TEXT_MEMBERS = ("json", "cls", "txt")  # carried as text columns named by extension


class ShardDataError(Exception):
    """A shard that is readable storage but not a shard this pipeline can read: its reason and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


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
    reader = _read_parquet if spec.format == "parquet" else _read_webdataset
    counted = [0]
    failure = None
    try:
        for read in reader(shard, spec, counted):
            block = read
            if shard.skip:
                block = block.filter(pc.invert(pc.is_in(block.column("row_id"), pa.array(list(shard.skip)))))
            if block.num_rows:
                yield block
    except ShardDataError as exc:
        failure = ShardFailure(shard.uri, exc.reason, exc.detail)
    except Exception as exc:
        if storage.is_transient(exc):
            raise
        failure = ShardFailure(shard.uri, "unreadable", storage.describe(exc))
    location = output.OutputLocation.open(spec.output_uri, spec.storage)
    write_entry(location, shard.index, shard.uri, LedgerEntry(counted[0], failure))


def _block(
    shard: Shard,
    keys: list[str],
    locators: list[str],
    images: pa.Array,
    problems: list[tuple[str, str] | None],
    carried: list[tuple[Any, ...]] | None,
) -> pa.Table:
    """A block of records: ids from their keys, where they are, bytes, failures, carried values."""
    columns: dict[str, Any] = {
        "row_id": pa.array([storage.row_id(key) for key in keys], pa.string()),
        "uri": pa.array([f"{shard.uri}#{locator}" for locator in locators], pa.string()),
        SHARD_INDEX_FIELD.name: pa.array([shard.index] * len(keys), pa.int32()),
        RECORD_BYTES_COLUMN: images,
        "reason": pa.array([p[0] if p else None for p in problems], pa.string()),
        "error": pa.array([p[1] if p else None for p in problems], pa.string()),
    }
    if carried is not None:
        columns[CARRIED_ROW_COLUMN] = pa.array(pack_carried(carried), pa.binary())
    return pa.table(columns)


def _image_bytes(column: pa.ChunkedArray | pa.Array, spec: ReadSpec) -> pa.Array:
    """The image column as binary: bytes, or a Hugging Face image struct's ``bytes`` field."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(array.type) and array.type.get_field_index("bytes") >= 0:
        array = pc.struct_field(array, "bytes")
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise ShardDataError(
            "bad_image_column", f"input.image_column {spec.image_column!r} is {array.type}, not binary"
        )
    return array.cast(pa.large_binary())


def _read_parquet(shard: Shard, spec: ReadSpec, counted: list[int]) -> Iterator[pa.Table]:
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
            images = _image_bytes(batch.column(spec.image_column), spec)
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
            yield _block(shard, keys, indices, images, problems, values)


def _member_key(member_name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: the key (path without extensions), the extension."""
    folder, base = posixpath.split(member_name)
    stem, _, extension = base.partition(".")
    return posixpath.join(folder, stem), extension.lower()


def _unsafe(member_name: str) -> bool:
    return member_name.startswith("/") or ".." in member_name.split("/")


Record = tuple[str, dict[str, bytes], bool]  # WebDataset key, members by extension, unsafe name seen


def _tar_records(archive: tarfile.TarFile) -> Iterator[Record]:
    """The archive's records in order: consecutive members sharing a key."""
    current: Record | None = None
    for member in archive:
        if not member.isfile():
            continue
        key, extension = _member_key(member.name)
        if current is None or current[0] != key:
            if current is not None:
                yield current
            current = (key, {}, False)
        if _unsafe(member.name):  # never extracted; the record fails with reason unsafe_member
            current = (key, current[1], True)
            continue
        data = archive.extractfile(member)
        current[1][extension] = data.read() if data is not None else b""
    if current is not None:
        yield current


def _read_webdataset(shard: Shard, spec: ReadSpec, counted: list[int]) -> Iterator[pa.Table]:
    """Records are consecutive members sharing a key; the image is the member of an ``input.extensions``.

    A tar cut short yields the records before the cut, then fails the shard (``truncated``).
    """
    fs = storage.fsspec_filesystem(shard.uri, spec.storage)
    name = shard_name(shard.uri, spec.root)
    carried = list(spec.carried.names) if spec.carried is not None else None
    pending: list[Record] = []
    with fs.open(storage.fs_path(shard.uri), "rb") as handle:
        try:
            archive = tarfile.open(fileobj=handle, mode="r|")  # noqa: SIM115  # streamed, closed below
        except tarfile.TarError as exc:
            raise ShardDataError("not_a_tar", storage.describe(exc)) from exc
        failure: ShardDataError | None = None
        try:
            for record in _tar_records(archive):
                pending.append(record)
                if len(pending) >= spec.rows_per_block:
                    counted[0] += len(pending)
                    yield _tar_block(shard, spec, name, pending, carried)
                    pending = []
        except tarfile.TarError as exc:
            failure = ShardDataError("truncated", storage.describe(exc))
        finally:
            archive.close()
    if pending:
        counted[0] += len(pending)
        yield _tar_block(shard, spec, name, pending, carried)
    if failure is not None:
        raise failure


def _tar_block(
    shard: Shard,
    spec: ReadSpec,
    name: str,
    records: list[tuple[str, dict[str, bytes], bool]],
    carried: list[str] | None,
) -> pa.Table:
    images: list[bytes | None] = []
    problems: list[tuple[str, str] | None] = []
    suffixes = [extension.lstrip(".") for extension in spec.extensions]
    for key, members, unsafe in records:
        image = next((members[ext] for ext in suffixes if ext in members), None)
        images.append(None if unsafe else image)
        if unsafe:
            problems.append(
                (FailureReason.UNSAFE_MEMBER.value, f"a member of {key!r} is named with '..' or '/'")
            )
        elif image is None:
            found = ", ".join(sorted(members)) or "none"
            problems.append(
                (FailureReason.NO_IMAGE.value, f"no member of input.extensions (members: {found})")
            )
        else:
            problems.append(None)
    values = None
    if carried is not None:
        values = [tuple(_text(members.get(column)) for column in carried) for _, members, _ in records]
    keys = [f"{name}#{key}" for key, _, _ in records]
    locators = [key for key, _, _ in records]
    return _block(shard, keys, locators, pa.array(images, pa.large_binary()), problems, values)


def _text(data: bytes | None) -> str | None:
    return data.decode("utf-8", errors="replace") if data is not None else None
