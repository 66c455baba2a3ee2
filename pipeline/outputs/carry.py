"""Carrying a previous output's rows forward: a join spilled to disk in buckets, whole parts copied.

An incremental run (``output.previous``) keeps a previous row when its input is still listed
with the fingerprint the row holds (its ``fingerprint`` column: size and ETag or modification
time, :mod:`pipeline.inputs.fingerprints`; for an output written before rows held one, the
fingerprint its ``_inputs.parquet`` recorded) and, unless ``output.keep_failed``, the row is ok:
a failed row of an unchanged input is retried.

The driver never holds every id. The listing's ids and fingerprints, and the previous parts'
ids, statuses and fingerprints, are streamed a chunk at a time into Parquet files on local disk
(a temporary folder), split into buckets by the first hex digits of the row id, as many as keep
a bucket under :data:`BUCKET_ROWS` rows; each bucket's two sides are then joined in memory, one
bucket at a time, and the rows to carry spilled again by part. So the driver holds a chunk, a
bucket or a part's ids at a time, plus what is left to compute (new and changed inputs),
whatever the number of rows carried. A part whose every row is kept is copied as it is (a
server-side copy on S3); any other is filtered batch by batch into a new part (a part written
before rows held their fingerprint is always rewritten, gaining the column, so the new output
has one schema).

A carried part is written like one of Ray Data's: the part ``data/part-carried-<key>-0.parquet``
first, then its committed checkpoint ``_checkpoint/carried/part-carried-<key>.parquet`` listing
its ids, so the restore after a crash keeps it (or deletes it, when the checkpoint was not
written) and the next attempt carries only what is not there yet. ``<key>`` names the previous
output and part, so an attempt finds what an earlier one carried.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.inputs import fingerprints, row_ids
from pipeline.outputs.layout import CHECKPOINT_DIR, DATA_DIR
from pipeline.schema import FINGERPRINT_FIELD, STATUS_FAILED

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.inputs.listing import Listing
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.previous import PreviousOutput

CARRIED_CHECKPOINTS = f"{CHECKPOINT_DIR}/carried"
FILTER_BATCH_ROWS = 4096  # rows per batch when a part is filtered: a few MB of predictions at most
CHUNK_ROWS = 8192  # rows buffered before they are spilled into the buckets (a few MB)
BUCKET_ROWS = 32_768  # about the most rows of one side a bucket holds: what the join holds at once
PRINT = FINGERPRINT_FIELD.name


@dataclass(frozen=True)
class Carried:
    """What an incremental run took from its previous output, and what it left to compute."""

    previous: str  # the previous output's URI
    carried: int  # rows carried forward (every attempt's)
    computed: int  # inputs computed: new, changed, retried
    retried: int  # failed before, input unchanged, computed again (output.keep_failed: false)
    dropped: int  # inputs of the previous output no longer listed
    parts_copied: int  # this attempt: whole parts copied
    parts_filtered: int  # this attempt: parts rewritten with only the rows kept

    def as_dict(self) -> dict[str, Any]:
        """Plain data: the ``incremental`` entry of the summary and ``_SUCCESS``."""
        return asdict(self)


def carried_base(previous: PreviousOutput, part: str) -> str:
    """``part-carried-<key>``: the carried part's name, the same on every attempt."""
    key = hashlib.sha256(f"{previous.uri}/{part}".encode()).hexdigest()[:24]
    return f"part-carried-{key}"


class _Spill:
    """Tables appended a chunk at a time, written under ``root/<value of key>/`` on local disk."""

    def __init__(self, root: Path, key: str) -> None:
        self.root, self.key = root, key
        self._buffer: list[pa.Table] = []
        self._rows = self._chunks = 0

    def add(self, table: pa.Table) -> None:
        """Buffer ``table``; spill the buffer once it holds :data:`CHUNK_ROWS` rows."""
        self._buffer.append(table)
        self._rows += table.num_rows
        if self._rows >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, one file per value of the key in each chunk."""
        if not self._rows:
            return
        import pyarrow.dataset as ds

        table = pa.concat_tables(self._buffer)
        ds.write_dataset(
            table,
            self.root,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([table.schema.field(self.key)])),
            basename_template=f"chunk-{self._chunks}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            use_threads=False,
        )
        self._buffer, self._rows, self._chunks = [], 0, self._chunks + 1

    def keys(self) -> set[str]:
        """The key's values spilled."""
        return {path.name for path in self.root.iterdir()} if self.root.exists() else set()

    def read(self, value: object, schema: pa.Schema) -> pa.Table:
        """Every row spilled with the key ``value`` (none: an empty table of ``schema``)."""
        folder = self.root / str(value)
        if not folder.exists():
            return schema.empty_table()
        return pq.read_table(folder, partitioning=None, schema=schema, use_threads=False)


NOW = pa.schema(
    [("row_id", pa.string()), ("now", pa.string()), ("position", pa.int64()), ("done", pa.bool_())]
)
BEFORE = pa.schema(
    [("row_id", pa.string()), ("status", pa.string()), (PRINT, pa.string()), ("part", pa.int32())]
)
RECORDED = pa.schema([("row_id", pa.string()), ("recorded", pa.string())])
TO_WRITE = pa.schema([("row_id", pa.string()), (PRINT, pa.string())])


@dataclass
class _Tally:
    """The counts a carry gathers bucket by bucket, and per part: O(parts), never O(rows)."""

    carried: int = 0
    retried: int = 0
    dropped: int = 0
    left: list[int] = field(default_factory=list)  # positions in the listing of the inputs left to do
    to_write: Counter[int] = field(default_factory=Counter)  # per previous part: rows to carry now


def carry_forward(
    location: OutputLocation,
    previous: PreviousOutput,
    listing: Listing,
    todo: list[str],
    *,
    keep_failed: bool,
) -> tuple[list[str], Carried]:
    """Write the previous rows to keep that the output lacks (``todo``: the inputs the restore left).

    ``todo`` holds the listing's URIs in its order (what the restore leaves). Returns what is
    left to compute (``todo`` but the inputs carried) and the counts.
    """
    location.prepare()  # data/, where the filesystem has folders
    with storage.translate_errors("create", location.uri_of(CARRIED_CHECKPOINTS), location.storage_config):
        location.fs.makedirs(location.path_of(CARRIED_CHECKPOINTS), exist_ok=True)
    parts = previous.parts()
    digits = _bucket_digits(max(len(listing.uris), previous.rows()))
    with tempfile.TemporaryDirectory(prefix="pipeline-carry-") as folder:
        root = Path(folder)
        now, before = _Spill(root / "now", "bucket"), _Spill(root / "before", "bucket")
        recorded, to_write = _Spill(root / "recorded", "bucket"), _Spill(root / "write", "part")
        _spill_listing(listing, todo, now, digits)
        rows, own, unknown = _spill_parts(previous, parts, before, digits)
        if unknown:  # an output written before rows held their fingerprint (or rows without one)
            for batch in previous.recorded_fingerprints(CHUNK_ROWS):
                ids = batch.column("row_id")
                recorded.add(
                    pa.table(
                        [ids, batch.column(PRINT), _bucket(ids, digits)], names=[*RECORDED.names, "bucket"]
                    )
                )
            recorded.flush()
        tally = _Tally()
        for bucket in sorted(now.keys() | before.keys()):
            _join(
                tally,
                now.read(bucket, NOW),
                before.read(bucket, BEFORE),
                recorded.read(bucket, RECORDED),
                to_write,
                keep_failed=keep_failed,
            )
        to_write.flush()
        copied = filtered = 0
        for index, count in sorted(tally.to_write.items()):
            kept = to_write.read(index, TO_WRITE)
            base = carried_base(previous, parts[index])
            name = f"{DATA_DIR}/{base}-0.parquet"
            if own[index] and count == rows[index] and previous.copies_whole_parts:
                previous.copy_part(parts[index], location, name)
                copied += 1
            else:
                _filter(previous, parts[index], location, name, kept)
                filtered += 1
            # Last: the checkpoint vouches for the part (pipeline.outputs.restore keeps what it covers).
            location.write_table(f"{CARRIED_CHECKPOINTS}/{base}.parquet", kept.select(["row_id"]))
    counts = Carried(
        previous=previous.uri,
        carried=tally.carried,
        computed=len(listing.uris) - tally.carried,
        retried=tally.retried,
        dropped=tally.dropped,
        parts_copied=copied,
        parts_filtered=filtered,
    )
    return [listing.uris[position] for position in sorted(tally.left)], counts


def _bucket_digits(rows: int) -> int:
    """How many hex digits of the row id name a bucket: enough that one holds about BUCKET_ROWS."""
    digits = 1
    while rows > BUCKET_ROWS * 16**digits:
        digits += 1
    return digits


def _bucket(ids: pa.Array | pa.ChunkedArray, digits: int) -> pa.Array:
    """Each row id's bucket: its first ``digits`` hex digits."""
    return pc.utf8_slice_codeunits(ids, 0, digits)


def _spill_listing(listing: Listing, todo: list[str], now: _Spill, digits: int) -> None:
    """The listing's ids, fingerprints, positions and whether written already, into ``now``'s buckets."""
    pending = iter(todo)
    wanted = next(pending, None)
    everything = len(todo) == len(listing.uris)  # a new run: nothing written yet
    for start in range(0, len(listing.uris), CHUNK_ROWS):
        uris = listing.uris[start : start + CHUNK_ROWS]
        done = []
        for uri in uris:  # the inputs left follow the listing's order: walked alongside it
            done.append(not everything and uri != wanted)
            if uri == wanted:
                wanted = next(pending, None)
        ids = pa.array([row_ids.row_id(uri) for uri in uris], pa.string())
        columns = [
            ids,
            pa.array(fingerprints.listed(listing, start, start + CHUNK_ROWS), pa.string()),
            pa.array(range(start, start + len(uris)), pa.int64()),
            pa.array(done, pa.bool_()),
            _bucket(ids, digits),
        ]
        now.add(pa.table(columns, names=[*NOW.names, "bucket"]))
    if wanted is not None:
        raise ValueError(f"carry_forward: {wanted!r} is left to do but not in the listing's order")
    now.flush()


def _spill_parts(
    previous: PreviousOutput, parts: list[str], before: _Spill, digits: int
) -> tuple[list[int], list[bool], bool]:
    """Each previous part's ids, statuses and fingerprints into ``before``'s buckets.

    Returns each part's row count, whether it has the fingerprint column, and whether any row
    lacks a fingerprint (then ``_inputs.parquet``'s are looked up).
    """
    rows, own, unknown = [0] * len(parts), [True] * len(parts), False
    for index, part in enumerate(parts):
        for batch in previous.batches(part, ["row_id", "status", PRINT], CHUNK_ROWS):
            count = batch.num_rows
            own[index] = PRINT in batch.schema.names
            prints = batch.column(PRINT) if own[index] else pa.nulls(count, pa.string())
            ids = batch.column("row_id")
            part_column = pa.array([index] * count, pa.int32())
            columns = [ids, batch.column("status"), prints, part_column, _bucket(ids, digits)]
            before.add(pa.table(columns, names=[*BEFORE.names, "bucket"]))
            rows[index] += count
            unknown = unknown or prints.null_count > 0
    before.flush()
    return rows, own, unknown


def _join(
    tally: _Tally, now: pa.Table, before: pa.Table, recorded: pa.Table, to_write: _Spill, *, keep_failed: bool
) -> None:
    """One bucket: which previous rows are kept, which of them to write, which inputs are left."""
    if recorded.num_rows:  # rows without their own fingerprint take the one _inputs.parquet recorded
        before = before.join(recorded, keys="row_id", join_type="left outer", use_threads=False)
        before = before.set_column(
            before.schema.get_field_index(PRINT),
            PRINT,
            pc.coalesce(before.column(PRINT), before.column("recorded")),
        ).drop_columns(["recorded"])
    matched = before.join(now, keys="row_id", join_type="left outer", use_threads=False)
    tally.dropped += int(pc.sum(pc.is_null(matched.column("position"))).as_py() or 0)
    same = pc.fill_null(pc.equal(matched.column(PRINT), matched.column("now")), fill_value=False)
    failed = pc.equal(matched.column("status"), STATUS_FAILED)
    keep = same if keep_failed else pc.and_(same, pc.invert(failed))
    if not keep_failed:
        tally.retried += int(pc.sum(pc.and_(same, failed)).as_py() or 0)
    kept = matched.filter(keep)
    tally.carried += kept.num_rows
    writing = kept.filter(pc.invert(kept.column("done")))
    if writing.num_rows:
        to_write.add(writing.select(["row_id", PRINT, "part"]))
        tally.to_write.update(dict(Counter(writing.column("part").to_pylist())))
    left = now.filter(
        pc.and_(
            pc.invert(now.column("done")),
            pc.invert(pc.is_in(now.column("row_id"), value_set=kept.column("row_id").combine_chunks())),
        )
    )
    tally.left.extend(left.column("position").to_pylist())


def _filter(previous: PreviousOutput, part: str, location: OutputLocation, name: str, kept: pa.Table) -> None:
    """The rows of a part whose ids ``kept`` holds, read and written batch by batch.

    A part written before rows held their fingerprint gains the column (after ``run_id``, where
    the output's schema has it), with the fingerprint the row was kept for.
    """
    ids, prints = kept.column("row_id").combine_chunks(), kept.column(PRINT).combine_chunks()
    schema = previous.part_schema(part)
    own = PRINT in schema.names
    at = len(schema) if "run_id" not in schema.names else schema.get_field_index("run_id") + 1
    target = schema if own else schema.insert(at, FINGERPRINT_FIELD)
    with (
        storage.translate_errors(
            "filter a previous part into", location.uri_of(name), location.storage_config
        ),
        location.fs.open(location.path_of(name), "wb") as out,
        pq.ParquetWriter(out, target) as writer,
    ):
        for batch in _kept_batches(previous.batches(part, None, FILTER_BATCH_ROWS), ids):
            if own:
                writer.write_batch(batch)
                continue
            found = prints.take(pc.index_in(batch.column("row_id"), value_set=ids))
            writer.write_batch(batch.add_column(at, FINGERPRINT_FIELD, found))


def _kept_batches(batches: Iterator[pa.RecordBatch], ids: pa.Array) -> Iterator[pa.RecordBatch]:
    """Each batch's rows whose id is in ``ids``."""
    for batch in batches:
        yield batch.filter(pc.is_in(batch.column("row_id"), value_set=ids))


def describe(incremental: dict[str, Any]) -> str:
    """The summary's and inspect's line on an incremental run, or why it ran in full.

    ``s3://b/preds/2026-12-05: 19,600 carried, 400 computed (12 retried), 35 dropped``
    """
    if "full_run" in incremental:
        return f"{incremental['previous']}: full run ({incremental['full_run']})"
    counts = {key: f"{incremental[key]:,}" for key in ("carried", "computed", "retried", "dropped")}
    return (
        f"{incremental['previous']}: {counts['carried']} carried, {counts['computed']} computed "
        f"({counts['retried']} retried), {counts['dropped']} dropped"
    )
