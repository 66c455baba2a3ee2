"""Images inside shards (Parquet tables, WebDataset tars): record ids and the shard ledger.

A run over shards lists shards, never records: ``_inputs.parquet`` holds the shards, and
the records stream through Ray Data's read tasks (:mod:`pipeline.inputs.shard_source`), one task per
shard, their image bytes in the block. Each record's id:

- Parquet with ``input.key_column``: the key's text, so a table whose keys are the URIs of
  loose files gives the rows the ids that run over the files gives;
- Parquet without one: ``<shard name>#<row index>`` (the shard's path under ``input.uri``
  and the record's 0-based row in it);
- WebDataset: ``<shard name>#<key>``, the key being the members' shared name.

``row_id`` is :func:`pipeline.inputs.row_ids.row_id` of that id; ``uri`` says where the record is:
``<shard uri>#<row index>`` or ``<shard uri>#<key>``.

The ledger, ``_shards/<index>.json`` under the output, is written by each read task when it
has read its shard to the end: how many records the shard holds, and why it could not be
read to the end, if it could not. The commit compares it with the parts
(:mod:`pipeline.outputs.shard_parts`); a resume skips the shards whose records are all written.

"""

from __future__ import annotations

import pickle
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline import storage
from pipeline.inputs import row_ids
from pipeline.schema import CARRIED_ROW_COLUMN, RECORD_BYTES_COLUMN, FailureReason

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from pipeline.config import InputConfig, StorageConfig
    from pipeline.inputs.reading import Fetched
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import SHARD_INDEX_FIELD

ROWS_PER_BLOCK = 256  # records per block a read task yields: one decode call's worth, or two


def shard_name(shard_uri: str, root: str) -> str:
    """The shard's path under the input root (its file name when the input is the shard itself)."""
    if shard_uri == root:
        return posixpath.basename(shard_uri)
    return posixpath.relpath(storage.fs_path(shard_uri), storage.fs_path(root))


@dataclass(frozen=True)
class ShardFailure:
    """Why a shard could not be read (to the end): its URI, a reason and a short detail."""

    uri: str
    reason: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        """As ``_SUCCESS`` and the summary list it (``failed_shards``)."""
        return {"uri": self.uri, "reason": self.reason, "error": self.detail}


@dataclass(frozen=True)
class LedgerEntry:
    """One shard as its read task found it: records read, and a failure if reading stopped early."""

    records: int
    failure: ShardFailure | None = None


class ShardLedger(Protocol):
    """Where a read task records a shard read to its end: the output's ledger, picklable."""

    def __call__(self, index: int, uri: str, entry: LedgerEntry) -> None:
        """Record the ``index``-th shard (at ``uri``) as its read task found it."""


@dataclass(frozen=True)
class ReadSpec:
    """What every shard's read task needs; small and picklable."""

    format: str  # parquet | webdataset
    root: str  # input.uri, normalised: shard names are relative to it
    storage: StorageConfig
    ledger: ShardLedger  # records each shard read to its end (pipeline.outputs.shard_ledger)
    image_column: str = "image"
    key_column: str | None = None
    extensions: tuple[str, ...] = ()
    carried: pa.Schema | None = None  # the carried columns and their types; None: none
    rows_per_block: int = ROWS_PER_BLOCK

    @classmethod
    def of(
        cls, source: InputConfig, kind: str, storage_config: StorageConfig, ledger: ShardLedger
    ) -> ReadSpec:
        """The spec of a run over ``kind`` shards (carried types are added once known)."""
        return cls(
            format=kind,
            root=storage.normalise(source.uri),
            storage=storage_config,
            ledger=ledger,
            image_column=source.image_column,
            key_column=source.key_column,
            extensions=tuple(source.extensions),
        )


@dataclass(frozen=True)
class Shard:
    """One read task's shard: where it is, its position in the run's shard list, rows already written."""

    index: int
    uri: str
    skip: frozenset[str] = field(default_factory=frozenset)  # row ids written by an earlier attempt
    # The shard's fingerprint as listed (size and ETag or modification time), stored in each of
    # its records' rows: with the record's key (in its row id) it is the record's fingerprint.
    fingerprint: str | None = None


def pack_carried(rows: list[tuple[Any, ...]]) -> list[bytes]:
    """Each record's carried values as one cell; :func:`unpack_carried` restores their Arrow types."""
    return [pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL) for row in rows]


def unpack_carried(cells: np.ndarray, schema: pa.Schema) -> dict[str, pa.Array]:
    """The carried columns of a batch, each with its type (ints stay exact, nulls stay null)."""
    import pyarrow as pa

    rows = [pickle.loads(cell) for cell in cells]  # noqa: S301  # written by this run's own read tasks
    return {
        name: pa.array([row[position] for row in rows], schema.field(name).type)
        for position, name in enumerate(schema.names)
    }


def records_fetched(batch: dict[str, np.ndarray], max_bytes: int) -> list[Fetched]:
    """The bytes of a batch of shard records, as :func:`pipeline.inputs.reading.fetch_all` gives a file's.

    A record the read task already failed keeps its reason; one larger than
    ``preprocess.max_input_bytes`` fails as a file would.
    """
    fetched: list[Fetched] = []
    for data, reason, detail in zip(batch[RECORD_BYTES_COLUMN], batch["reason"], batch["error"], strict=True):
        if isinstance(reason, str):
            fetched.append((None, FailureReason(reason), str(detail or "")))
        elif data is None:
            fetched.append((None, FailureReason.NO_IMAGE, "the record has no image bytes"))
        elif len(data) > max_bytes:
            limit = f"preprocess.max_input_bytes={max_bytes}"
            fetched.append((None, FailureReason.TOO_LARGE, f"{len(data)} bytes, over {limit}"))
        else:
            fetched.append((bytes(data), None, ""))
    return fetched


IN_FLIGHT = (RECORD_BYTES_COLUMN, CARRIED_ROW_COLUMN)


class ShardDataError(Exception):
    """A shard that is readable storage but not a shard this pipeline can read: its reason and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def block(
    shard: Shard,
    keys: list[str],
    locators: list[str],
    images: pa.Array,
    problems: list[tuple[str, str] | None],
    carried: list[tuple[Any, ...]] | None,
) -> pa.Table:
    """A block of records: ids from their keys, where they are, bytes, failures, carried values."""
    columns: dict[str, Any] = {
        "row_id": pa.array([row_ids.row_id(key) for key in keys], pa.string()),
        "uri": pa.array([f"{shard.uri}#{locator}" for locator in locators], pa.string()),
        SHARD_INDEX_FIELD.name: pa.array([shard.index] * len(keys), pa.int32()),
        RECORD_BYTES_COLUMN: images,
        "reason": pa.array([p[0] if p else None for p in problems], pa.string()),
        "error": pa.array([p[1] if p else None for p in problems], pa.string()),
    }
    if carried is not None:
        columns[CARRIED_ROW_COLUMN] = pa.array(pack_carried(carried), pa.binary())
    return pa.table(columns)


def image_bytes(column: pa.ChunkedArray | pa.Array, spec: ReadSpec) -> pa.Array:
    """The image column as binary: bytes, or a Hugging Face image struct's ``bytes`` field."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(array.type) and array.type.get_field_index("bytes") >= 0:
        array = pc.struct_field(array, "bytes")
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise ShardDataError(
            "bad_image_column", f"input.image_column {spec.image_column!r} is {array.type}, not binary"
        )
    return array.cast(pa.large_binary())
