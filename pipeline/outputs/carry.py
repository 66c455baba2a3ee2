"""Carrying a previous output's rows forward: whole parts copied, others filtered in streaming.

An incremental run (``output.previous``) keeps a previous row when its input is still listed
with the fingerprint it had then (size and ETag or modification time:
:func:`pipeline.inputs.fingerprints.unchanged`) and, unless ``output.keep_failed``, the row is
ok: a failed row of an unchanged input is retried. Each previous part (as its ``_SUCCESS``
lists it) is read for its ids and statuses only; a part whose every row is kept is copied as
it is (a server-side copy on S3), any other is filtered batch by batch into a new part, so the
driver never holds the table: only ids, as the tally does.

A carried part is written like one of Ray Data's: the part ``data/part-carried-<key>-0.parquet``
first, then its committed checkpoint ``_checkpoint/carried/part-carried-<key>.parquet`` listing
its ids, so the restore after a crash keeps it (or deletes it, when the checkpoint was not
written) and the next attempt carries only what is not there yet. ``<key>`` names the previous
output and part, so an attempt finds what an earlier one carried.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.inputs import fingerprints
from pipeline.outputs.layout import CHECKPOINT_DIR, DATA_DIR
from pipeline.outputs.previous import Previous
from pipeline.schema import STATUS_FAILED

if TYPE_CHECKING:
    from pipeline.inputs.listing import Listing
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.previous import PreviousOutput

CARRIED_CHECKPOINTS = f"{CHECKPOINT_DIR}/carried"


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


def carry_forward(
    location: OutputLocation,
    previous: PreviousOutput,
    listing: Listing,
    todo: list[str],
    *,
    keep_failed: bool,
) -> tuple[list[str], Carried]:
    """Write the previous rows to keep that the output lacks (``todo``: the inputs the restore left).

    Returns what is left to compute (``todo`` but the inputs carried) and the counts. The
    listing's ids are computed once, as Arrow strings: the driver holds ids, never rows.
    """
    before, now = previous.inputs(), fingerprints.listed_ids(listing)
    done = _written(listing, now, todo)
    location.prepare()  # data/, where the filesystem has folders
    with storage.translate_errors("create", location.uri_of(CARRIED_CHECKPOINTS), location.storage_config):
        location.fs.makedirs(location.path_of(CARRIED_CHECKPOINTS), exist_ok=True)
    same = fingerprints.unchanged(before, listing, now)
    kept: list[pa.Array] = []
    retried = copied = filtered = 0
    for part in previous.parts():
        table = previous.ids_and_statuses(part)
        ids = table.column("row_id").combine_chunks()
        unchanged = pc.is_in(ids, value_set=same)
        failed = pc.equal(table.column("status").combine_chunks(), STATUS_FAILED)
        keep = unchanged if keep_failed else pc.and_(unchanged, pc.invert(failed))
        retried += 0 if keep_failed else int(pc.sum(pc.and_(unchanged, failed)).as_py() or 0)
        kept.append(ids.filter(keep))
        write = pc.and_(keep, pc.invert(pc.is_in(ids, value_set=done)))
        to_write = int(pc.sum(write).as_py() or 0)
        if not to_write:
            continue
        base = carried_base(previous, part)
        if to_write == len(ids) and isinstance(previous, Previous):  # a table's rows: streamed
            _copy(previous, part, location, f"{DATA_DIR}/{base}-0.parquet")
            copied += 1
        else:
            _filter(previous, part, location, f"{DATA_DIR}/{base}-0.parquet", ids.filter(write))
            filtered += 1
        # Last: the checkpoint vouches for the part (pipeline.outputs.restore keeps what it covers).
        location.write_table(f"{CARRIED_CHECKPOINTS}/{base}.parquet", pa.table({"row_id": ids.filter(write)}))
    all_kept = pa.concat_arrays(kept) if kept else pa.array([], pa.string())
    left = pc.invert(pc.or_(pc.is_in(now, value_set=all_kept), pc.is_in(now, value_set=done)))
    counts = Carried(
        previous=previous.uri,
        carried=len(all_kept),
        computed=len(listing.uris) - len(all_kept),
        retried=retried,
        dropped=fingerprints.gone(before, now),
        parts_copied=copied,
        parts_filtered=filtered,
    )
    return [uri for uri, wanted in zip(listing.uris, left.to_pylist(), strict=True) if wanted], counts


def _copy(previous: Previous, part: str, location: OutputLocation, name: str) -> None:
    """A whole part, as it is: server-side on S3 (s3fs's copy), a file copy on a local disk."""
    source = previous.location.path_of(part)
    if storage.scheme_of(previous.uri) == storage.scheme_of(location.uri):
        with storage.translate_errors(
            "copy a previous part to", location.uri_of(name), location.storage_config
        ):
            location.fs.copy(source, location.path_of(name))
        return
    with (
        previous.location.fs.open(source, "rb") as reader,
        location.fs.open(location.path_of(name), "wb") as out,
    ):
        while chunk := reader.read(8 << 20):
            out.write(chunk)


def _filter(previous: PreviousOutput, part: str, location: OutputLocation, name: str, keep: pa.Array) -> None:
    """The rows of a part (or a table's run) whose ids are in ``keep``, read and written batch by batch."""
    schema, batches = previous.batches(part)
    with (
        storage.translate_errors(
            "filter a previous part into", location.uri_of(name), location.storage_config
        ),
        location.fs.open(location.path_of(name), "wb") as out,
        pq.ParquetWriter(out, schema) as writer,
    ):
        for batch in batches:
            writer.write_batch(batch.filter(pc.is_in(batch.column("row_id"), value_set=keep)))


def _written(listing: Listing, now: pa.Array, todo: list[str]) -> pa.Array:
    """Ids of the inputs the restore found written (``now``: the listing's ids; ``todo``: what it left)."""
    if len(todo) == len(listing.uris):  # a new run: nothing written yet
        return pa.array([], pa.string())
    left = set(todo)
    return now.filter(pa.array([uri not in left for uri in listing.uris], pa.bool_()))


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
