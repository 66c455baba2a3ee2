"""Resume and commit for runs over shards, without a listing of records.

:func:`restore` decides which shards to read again: those whose ledger entry
(:mod:`pipeline.inputs.shards`) says every record of theirs is in a written part are skipped; the
others are read again, their written rows filtered out by id. Only the ids of those
partially written shards are held.

:func:`tally` proves every record is in the output exactly once: per shard, the parts hold
as many rows as the ledger says the shard holds, and no row id appears twice. The
duplicate check reads the parts' ids in passes, each keeping only the ids of some of the
256 two-hex-digit prefixes, so at most about :data:`IDS_PER_PASS` ids (20 bytes each, as
fixed-width bytes sorted by numpy, not a hash table of strings) are held at a time.
The failed rows go to ``_failures.parquet`` part by part, never gathered in the driver.
"""

from __future__ import annotations

import math
import posixpath
from collections import Counter
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import JobFailedError
from pipeline.inputs import row_ids
from pipeline.inputs.shards import LedgerEntry, Shard
from pipeline.outputs.layout import FAILURES
from pipeline.outputs.restore import drop_unfinished
from pipeline.outputs.shard_ledger import read_ledger
from pipeline.outputs.tally import TALLY_COLUMNS, Tally, check_statuses, part_fragments, part_schema
from pipeline.schema import SHARD_INDEX_FIELD, STATUS_FAILED, STATUS_OK

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.config import StorageConfig
    from pipeline.outputs.layout import OutputLocation

IDS_PER_PASS = 250_000
PREFIXES = 256  # row ids are hex: their first two digits split them evenly
SHARD = SHARD_INDEX_FIELD.name


def _rows_per_shard(fragments: list[Any], shards: int) -> np.ndarray:
    """How many rows the parts hold of each shard."""
    counts = np.zeros(shards, dtype=np.int64)
    for fragment in fragments:
        column = fragment.to_table(columns=[SHARD]).column(SHARD).to_numpy()
        if len(column) and (column.min() < 0 or column.max() >= shards):
            raise JobFailedError(f"part {fragment.path} holds rows of a shard this run does not list")
        counts += np.bincount(column, minlength=shards)
    return counts


def restore(location: OutputLocation, uris: list[str], run_id: str) -> tuple[list[Shard], int]:
    """Drop what an interrupted attempt left half-written; the shards to read, and the rows written."""
    from pipeline.ops.logs import get_logger

    drop_unfinished(location)
    ledger = read_ledger(location)
    fragments = part_fragments(location, location.storage_config)
    written = _rows_per_shard(fragments, len(uris))
    complete = {
        index
        for index, entry in ledger.items()
        if entry.failure is None and index < len(uris) and entry.records == written[index]
    }
    partial = pa.array(
        [index for index in range(len(uris)) if index not in complete and written[index]], pa.int32()
    )
    skips: dict[int, set[str]] = {}
    if len(partial):
        for fragment in fragments:
            table = fragment.to_table(columns=["row_id", SHARD], filter=pc.field(SHARD).isin(partial))
            for index, row in zip(
                table.column(SHARD).to_pylist(), table.column("row_id").to_pylist(), strict=True
            ):
                skips.setdefault(index, set()).add(row)
    todo = [
        Shard(index, uri, frozenset(skips.get(index, ())))
        for index, uri in enumerate(uris)
        if index not in complete
    ]
    done = int(written.sum())
    if done or ledger:
        get_logger(run_id=run_id, stage="driver").info(
            "checkpoint restored",
            written=done,
            shards_complete=len(complete),
            shards_partial=len(partial),
            shards_to_read=len(todo),
        )
    return todo, done


def tally(
    location: OutputLocation, storage_config: StorageConfig, uris: list[str], carried: Sequence[str] = ()
) -> Tally:
    """Read the parts back against the ledger; write the failed rows; the counts to commit."""
    ledger = read_ledger(location)
    unread = [uri for index, uri in enumerate(uris) if index not in ledger]
    if unread:
        raise JobFailedError(
            f"{len(unread)} shards were never read to their end (first: {unread[0]}); not committing"
        )
    fragments = part_fragments(location, storage_config)
    root = storage.fs_path(location.uri)
    columns = [*TALLY_COLUMNS, SHARD, *carried]
    ok, by_reason, files = 0, Counter[str](), []
    counts = np.zeros(len(uris), dtype=np.int64)
    with storage.translate_errors("read back the parts under", location.uri, storage_config):
        schema = part_schema(fragments[0], columns) if fragments else None
        with _FailureWriter(location, schema) as failures:
            for fragment in fragments:
                if part_schema(fragment, columns) != schema:
                    raise JobFailedError(
                        f"part {fragment.path} has another schema than the others; not committing"
                    )
                table = fragment.to_table(columns=columns)
                files.append({"path": posixpath.relpath(fragment.path, root), "rows": table.num_rows})
                counts += np.bincount(table.column(SHARD).to_numpy(), minlength=len(uris))[: len(uris)]
                statuses = table.column("status")
                ok += int(pc.sum(pc.equal(statuses, STATUS_OK)).as_py() or 0)
                failed = table.filter(pc.equal(statuses, STATUS_FAILED))
                for item in pc.value_counts(failed.column("reason")).to_pylist():
                    by_reason[str(item["values"])] += int(item["counts"])
                failures.write(failed)
    _check_counts(ledger, counts, uris)
    rows = int(counts.sum())
    check_statuses(rows, ok, by_reason.total())
    _check_unique(fragments, rows)
    return Tally(
        rows=rows,
        ok=ok,
        failed_by_reason=dict(sorted(by_reason.items())),
        failures=None,
        files=sorted(files, key=lambda item: str(item["path"])),
        carried=[{"name": name, "type": str(schema.field(name).type)} for name in carried] if schema else [],
        failed_shards=[entry.failure.as_dict() for _, entry in sorted(ledger.items()) if entry.failure],
    )


def _check_counts(ledger: dict[int, LedgerEntry], counts: np.ndarray, uris: list[str]) -> None:
    """Every shard's records, as its read task counted them, are the rows the parts hold of it."""
    wrong = [
        (uris[index], ledger[index].records, int(counts[index]))
        for index in range(len(uris))
        if ledger[index].records != counts[index]
    ]
    if wrong:
        uri, read, written = wrong[0]
        raise JobFailedError(
            f"output does not match the shards: {len(wrong)} shards differ (first: {uri}, {read} records "
            f"read, {written} rows written); not committing"
        )


def _fixed_ids(column: pa.ChunkedArray) -> np.ndarray:
    """Row ids (all ``row_ids.ROW_ID_HEX_CHARS`` long) as fixed-width bytes, no copy per id."""
    width = row_ids.ROW_ID_HEX_CHARS
    arrays = []
    for chunk in column.chunks:
        offsets = np.frombuffer(chunk.buffers()[1], np.int32, len(chunk) + 1, chunk.offset * 4)
        if len(chunk) and (chunk.null_count or np.any(np.diff(offsets) != width)):
            raise JobFailedError("output has a row id that is not one this pipeline writes; not committing")
        data = chunk.buffers()[2]
        arrays.append(np.frombuffer(data, f"S{width}", len(chunk), int(offsets[0])) if len(chunk) else None)
    return np.concatenate([array for array in arrays if array is not None] or [np.empty(0, f"S{width}")])


def _check_unique(fragments: list[Any], rows: int) -> None:
    """No row id twice, holding at most about :data:`IDS_PER_PASS` ids at a time (20 bytes each)."""
    passes = min(PREFIXES, max(1, math.ceil(rows / IDS_PER_PASS)))
    for number in range(passes):
        wanted = np.array([prefix % passes == number for prefix in range(PREFIXES)])
        kept: list[np.ndarray] = []
        for fragment in fragments:
            ids = _fixed_ids(fragment.to_table(columns=["row_id"]).column("row_id"))
            if passes > 1:  # the first two hex digits, as a number, pick the pass
                ids = ids[wanted[_prefix_numbers(ids)]]
            kept.append(ids)
        found = np.sort(np.concatenate(kept)) if kept else np.empty(0)
        duplicated = int(np.count_nonzero(found[1:] == found[:-1])) if len(found) else 0
        if duplicated:
            raise JobFailedError(
                f"output has {duplicated} duplicated rows (two records with one id: is input.key_column "
                "unique?); not committing"
            )


def _prefix_numbers(ids: np.ndarray) -> np.ndarray:
    """The first two hex digits of each id, as 0-255."""
    raw = ids.view(np.uint8).reshape(len(ids), -1)[:, :2].astype(np.int16)
    digits = np.where(raw >= ord("a"), raw - ord("a") + 10, raw - ord("0"))
    return (digits[:, 0] * 16 + digits[:, 1]) % PREFIXES


class _FailureWriter:
    """``_failures.parquet``, written a part's failed rows at a time (an empty table when none)."""

    def __init__(self, location: OutputLocation, schema: pa.Schema | None) -> None:
        self._location, self._schema = (
            location,
            schema or pa.schema([(name, pa.string()) for name in TALLY_COLUMNS]),
        )
        self._handle: Any = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> Self:
        self._handle = self._location.fs.open(self._location.path_of(FAILURES), "wb")
        self._writer = pq.ParquetWriter(self._handle, self._schema)
        return self

    def write(self, table: pa.Table) -> None:
        if table.num_rows and self._writer is not None:
            self._writer.write_table(table.cast(self._schema))

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
        self._handle.close()
