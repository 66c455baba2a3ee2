"""Carrying a previous output's shard records forward: unchanged shards' records, filtered part by part.

A run over shards (:mod:`pipeline.inputs.shards`) holds no listing of records, only of shards;
each record's row stores its shard's fingerprint (size and ETag or modification time) and its
``shard_index``, the shard's position in that output's ``_inputs.parquet``. A record is carried
when its shard is still listed with the fingerprint its row holds, the previous run read that
shard to its end (it is not in ``failed_shards``) and, unless ``output.keep_failed``, the record
is ok. Whether a shard is the same one is decided by shard, from the two ``_inputs.parquet``
listings (a few thousand shards at most): the driver never holds the records.

Every previous part is filtered batch by batch into a carried part (never copied whole: each
row's ``shard_index`` is rewritten to the shard's position in this run's listing), written like
the file carry's (:mod:`pipeline.outputs.carry`): the part, then its committed checkpoint under
``_checkpoint/carried/``, so the restore after a crash keeps it or deletes it. A part whose
checkpoint the restore kept is not carried again. A shard whose every previous record was
carried gets its ledger entry (:mod:`pipeline.outputs.shard_ledger`) as if read to its end; the
job then runs the shard restore again (:func:`pipeline.outputs.shard_parts.restore`), which skips
those shards and reads the others skipping the ids already written: the one path a resumed run
takes too.

Counts are records: ``carried``; ``retried``, failed records of unchanged shards computed again;
``dropped``, the previous records of shards no longer listed. A changed shard's records are
all computed again (what it holds now); ``computed`` is known once the parts are read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.inputs import fingerprints, row_ids
from pipeline.inputs.shards import LedgerEntry
from pipeline.outputs.carry import CARRIED_CHECKPOINTS, FILTER_BATCH_ROWS, Carried, carried_base
from pipeline.outputs.layout import DATA_DIR
from pipeline.outputs.shard_ledger import write_entry
from pipeline.schema import FINGERPRINT_FIELD, SHARD_INDEX_FIELD, STATUS_FAILED

if TYPE_CHECKING:
    from pipeline.inputs.listing import Listing
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.previous import PreviousOutput

PRINT = FINGERPRINT_FIELD.name
SHARD = SHARD_INDEX_FIELD.name
GONE = -1  # a previous shard no longer listed
CHANGED = -2  # listed, but with another fingerprint, or not read to its end last time


@dataclass
class _Shards:
    """Where each previous shard is now (an index of this listing, GONE or CHANGED), and its counts."""

    now: np.ndarray  # per previous shard
    prints: pa.Array  # per previous shard: its fingerprint now (null unless carried)
    rows: np.ndarray = field(init=False)  # per previous shard: its records in the previous output
    carried: np.ndarray = field(init=False)  # per shard of this listing: records carried
    retried: int = 0
    dropped: int = 0

    def __post_init__(self) -> None:
        self.rows = np.zeros(len(self.now), np.int64)
        self.carried = np.zeros(int(self.now.max(initial=-1)) + 1, np.int64)


def carry_shards(
    location: OutputLocation, previous: PreviousOutput, listing: Listing, *, keep_failed: bool
) -> Carried:
    """Write the records of ``previous`` still current that the output lacks, and the ledger of whole shards.

    Run after the restore (what an earlier attempt carried is kept, not written twice). The
    counts' ``computed`` is 0 here: the records a run over shards computes are known once read.
    """
    location.prepare()
    with storage.translate_errors("create", location.uri_of(CARRIED_CHECKPOINTS), location.storage_config):
        location.fs.makedirs(location.path_of(CARRIED_CHECKPOINTS), exist_ok=True)
    shards = _match(previous, listing)
    kept_before = set(location.list_files(CARRIED_CHECKPOINTS))
    filtered = 0
    for part in previous.parts():
        base = carried_base(previous, part)
        checkpoint = f"{CARRIED_CHECKPOINTS}/{base}.parquet"
        if PRINT not in previous.part_schema(part).names:  # written before rows held fingerprints
            _count(shards, previous, part, keep_failed=keep_failed)
            continue
        if checkpoint in kept_before:  # carried by an earlier attempt, and the restore kept it
            _count(shards, previous, part, keep_failed=keep_failed)
            continue
        name = f"{DATA_DIR}/{base}-0.parquet"
        ids = _filter(shards, previous, part, location, name, keep_failed=keep_failed)
        if not len(ids):  # nothing of it carried: no part
            location.delete([name])
            continue
        location.write_table(checkpoint, pa.table({"row_id": ids}))  # last: it vouches for the part
        filtered += 1
    for before, now in enumerate(shards.now):  # shards carried whole: as if read to their end
        if now >= 0 and shards.rows[before] and shards.carried[now] == shards.rows[before]:
            write_entry(location, int(now), listing.uris[now], LedgerEntry(int(shards.rows[before])))
    return Carried(
        previous=previous.uri,
        carried=int(shards.carried.sum()),
        computed=0,
        retried=shards.retried,
        dropped=shards.dropped,
        parts_copied=0,
        parts_filtered=filtered,
    )


def _match(previous: PreviousOutput, listing: Listing) -> _Shards:
    """Each previous shard's index in this listing where it is unchanged (GONE, CHANGED otherwise)."""
    prints = fingerprints.listed(listing, 0, len(listing.uris))
    position = {row_ids.row_id(uri): index for index, uri in enumerate(listing.uris)}
    failed = {row_ids.row_id(str(item["uri"])) for item in previous.manifest.get("failed_shards", [])}
    now: list[int] = []
    now_prints: list[str | None] = []
    for batch in previous.recorded_fingerprints(FILTER_BATCH_ROWS):  # its shards, in its listing's order
        for shard_id, recorded in zip(
            batch.column("row_id").to_pylist(), batch.column(PRINT).to_pylist(), strict=True
        ):
            index = position.get(shard_id, GONE)
            if index >= 0 and (prints[index] is None or prints[index] != recorded or shard_id in failed):
                index = CHANGED
            now.append(index)
            now_prints.append(prints[index] if index >= 0 else None)
    return _Shards(np.array(now, np.int64), pa.array(now_prints, pa.string()))


def _kept(shards: _Shards, batch: pa.RecordBatch, *, keep_failed: bool) -> tuple[pa.Array, np.ndarray]:
    """Which of a batch's records are carried, and each record's shard index now; counts them."""
    listed = batch.column(SHARD).to_numpy()
    unknown = (listed < 0) | (listed >= len(shards.now))  # a shard its _inputs.parquet does not list
    now = np.full(len(listed), GONE, np.int64)
    now[~unknown] = shards.now[listed[~unknown]]
    shards.rows += np.bincount(listed[~unknown], minlength=len(shards.now))
    shards.dropped += int(np.count_nonzero(now == GONE))
    prints = shards.prints.take(pa.array(listed, mask=unknown))  # null where unknown: not carried
    same = pc.fill_null(pc.equal(batch.column(PRINT), prints), fill_value=False)
    same = pc.and_(same, pa.array(now >= 0))
    failed = pc.equal(batch.column("status"), STATUS_FAILED)
    keep = same if keep_failed else pc.and_(same, pc.invert(failed))
    if not keep_failed:
        shards.retried += int(pc.sum(pc.and_(same, failed)).as_py() or 0)
    mask = keep.to_numpy(zero_copy_only=False)
    shards.carried += np.bincount(now[mask], minlength=len(shards.carried))
    return keep, now


def _count(shards: _Shards, previous: PreviousOutput, part: str, *, keep_failed: bool) -> None:
    """Count a part's records without writing them (carried already, or not carried at all)."""
    columns = [SHARD, PRINT, "status"]
    for read in previous.batches(part, columns, FILTER_BATCH_ROWS):
        batch = read
        if PRINT not in batch.schema.names:  # no fingerprints: nothing of it is carried
            batch = batch.append_column(PRINT, pa.nulls(batch.num_rows, pa.string()))
        _kept(shards, batch, keep_failed=keep_failed)


def _filter(
    shards: _Shards,
    previous: PreviousOutput,
    part: str,
    location: OutputLocation,
    name: str,
    *,
    keep_failed: bool,
) -> pa.Array:
    """Write a part's carried records to ``name``, their shard index rewritten; the ids written."""
    schema = previous.part_schema(part)
    at = schema.get_field_index(SHARD)
    written: list[pa.Array] = []
    with (
        storage.translate_errors(
            "filter a previous part into", location.uri_of(name), location.storage_config
        ),
        location.fs.open(location.path_of(name), "wb") as out,
        pq.ParquetWriter(out, schema) as writer,
    ):
        for batch in previous.batches(part, None, FILTER_BATCH_ROWS):
            keep, now = _kept(shards, batch, keep_failed=keep_failed)
            rewritten = batch.set_column(at, schema.field(at), pa.array(now.astype(np.int32)))
            kept = rewritten.filter(keep)
            if kept.num_rows:
                writer.write_batch(kept)
                written.append(kept.column("row_id"))
    return pa.concat_arrays(written) if written else pa.array([], pa.string())
