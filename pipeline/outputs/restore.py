"""Restoring an output after a crash: delete what no finished write vouches for, find the work left.

Ray Data writes each part in two phases (a pending checkpoint, the part, the checkpoint's
rename), so a committed checkpoint proves its part was complete. :func:`restore_checkpoint`
deletes the rest (temporaries, parts no checkpoint covers, pending checkpoints), reads every
covered part back, drops the ones that do not read back, and returns the inputs still to do;
:func:`drop_unfinished` is its first steps, shared with runs over shards
(:mod:`pipeline.outputs.shard_parts`). :func:`rows_written` counts what a stopped run wrote.
"""

from __future__ import annotations

import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.inputs import row_ids
from pipeline.outputs.layout import (
    CHECKPOINT_DIR,
    DATA_DIR,
    PENDING_CHECKPOINT_SUFFIX,
    OutputLocation,
    is_lease,
    is_temporary,
)

_PART_NUMBER = re.compile(r"-\d+\.parquet$")
READ_BACK_THREADS = 8  # parts read back at once on restore (one round trip or two each on S3)
MAX_NAMED_PARTS = 5


def _part_base(name: str) -> str:
    """``part-<run>-<write>-<task>`` of ``part-<run>-<write>-<task>-<n>.parquet`` (Ray's numbering)."""
    return _PART_NUMBER.sub("", posixpath.basename(name))


def _split_checkpoints(names: list[str]) -> tuple[set[str], list[str]]:
    """Pending checkpoint files (a write not finished) and committed ones (its parts are complete)."""
    pending = {name for name in names if name.endswith(PENDING_CHECKPOINT_SUFFIX)}
    return pending, [name for name in names if name.endswith(".parquet") and name not in pending]


def rows_written(location: OutputLocation) -> int:
    """Rows in completely written parts (those a committed checkpoint covers), all attempts."""
    _, committed = _split_checkpoints(location.list_files(CHECKPOINT_DIR))
    if not committed:
        return 0
    with storage.translate_errors("read the checkpoint under", location.uri_of(CHECKPOINT_DIR)):
        paths = [location.path_of(name) for name in committed]
        return int(pads.dataset(paths, filesystem=location.arrow_fs(), format="parquet").count_rows())


@dataclass(frozen=True)
class Restored:
    """An output made consistent after a crash: the ids its parts hold, and what was deleted."""

    done: pa.Array  # row ids in the parts that read back (holding only rows their checkpoint lists)
    checkpoints: int  # committed checkpoints kept
    unfinished_parts: int  # parts no committed checkpoint covers
    pending_dropped: int
    damaged: list[str]  # parts that did not read back (deleted, cut short, other rows): redone
    temporaries: int  # ".<name>.<random>.tmp" files of writes cut short


def drop_unfinished(location: OutputLocation) -> Restored:
    """Steps 1 to 4 of :func:`restore_checkpoint`: delete what no finished write vouches for."""
    names = location.list_files()
    temporaries = location.delete(name for name in names if is_temporary(name) and not is_lease(name))
    pending, committed = _split_checkpoints([n for n in names if n.startswith(f"{CHECKPOINT_DIR}/")])
    parts: dict[str, list[str]] = {}
    for name in names:
        if name.startswith(f"{DATA_DIR}/") and not is_temporary(name):
            parts.setdefault(_part_base(name), []).append(name)
    covered = {posixpath.basename(name).removesuffix(".parquet"): name for name in committed}
    orphans = [name for base, files in parts.items() if base not in covered for name in files]
    deleted, dropped = location.delete(orphans), location.delete(sorted(pending))

    def read_back(base: str) -> pa.Array | None:
        return _read_back(location, covered[base], parts.get(base, []))

    with ThreadPoolExecutor(max_workers=READ_BACK_THREADS) as pool:  # a round trip or two each, on S3
        found = dict(zip(covered, pool.map(read_back, covered), strict=True))
    bad = [base for base, ids in found.items() if ids is None]
    # Named in the warning: the parts, or the checkpoint of a part that is gone.
    damaged = [name for base in bad for name in parts.get(base) or [covered[base]]]
    location.delete([name for base in bad for name in parts.get(base, [])])  # first: a crash leaves orphans
    location.delete([covered[base] for base in bad])
    done = [ids for ids in found.values() if ids is not None]
    return Restored(
        pa.concat_arrays(done) if done else pa.array([], pa.string()),
        len(covered) - len(bad),
        deleted,
        dropped,
        damaged,
        temporaries,
    )


def _read_back(location: OutputLocation, checkpoint: str, parts: list[str]) -> pa.Array | None:
    """The ids in a checkpoint's parts; None if they are gone, do not read, or hold rows it does not list.

    Parts that read back with fewer rows than the checkpoint lists keep those rows (they are
    there); the others are redone.
    """
    filesystem = location.arrow_fs()
    with storage.translate_errors("read back", location.uri_of(checkpoint), location.storage_config):
        try:
            listed = pq.read_table(location.path_of(checkpoint), columns=["row_id"], filesystem=filesystem)
            tables = [
                pq.read_table(location.path_of(name), columns=["row_id"], filesystem=filesystem)
                for name in parts
            ]
        except (pa.ArrowInvalid, FileNotFoundError):  # cut short, not Parquet, or gone since listed
            return None
    expected = listed.column("row_id").combine_chunks()
    chunks = [chunk for table in tables for chunk in table.column("row_id").chunks]
    ids = pa.chunked_array(chunks, pa.string()).combine_chunks()
    if not parts and len(expected):  # its part is gone
        return None
    if not pc.all(pc.is_in(ids, value_set=expected)).as_py():  # rows of another write
        return None
    return ids


def restore_checkpoint(location: OutputLocation, uris: list[str], run_id: str | None = None) -> list[str]:
    """Make the output consistent after a crash; return the inputs no part that reads back holds.

    Ray Data writes each part in two phases: ``<part>.pending.parquet`` (the part's
    ids), then the part files ``<part>-<n>.parquet``, then renames the pending file
    to ``<part>.parquet``. So a committed checkpoint proves its parts were complete,
    and every other part is the leftover of a write that did not finish. This:

    1. deletes the temporary files of writes cut short (``.<name>.<random>.tmp``, e.g. a
       ``_SUCCESS`` a kill interrupted), but not the lease's, which this job renews;
    2. deletes every part under ``data/`` that no committed checkpoint covers
       (what Ray's own restore does for pending checkpoints, and also safe when a
       crash cut a rename, a copy and a delete on object stores, between its halves);
    3. deletes the pending checkpoint files;
    4. reads every covered part back: a checkpoint whose parts are missing, cut short or
       hold other rows than it lists is deleted with its parts, so their rows are redone;
    5. returns the inputs whose ids no part that read back holds.

    The parts, not the checkpoint, decide what is done: a part deleted or damaged after it
    was written is redone, not reported missing on every rerun. Ray's restore is not used
    because it runs its id filter in an actor pool that reserves a whole CPU per actor (not
    configurable in Ray 2.60): on a small node next to the inference actors, the read and
    decode stages can never be scheduled and a resumed run stalls at 0 rows. Filtering the
    listing on the driver also means no bytes are fetched, and no task started, for
    finished inputs.
    """
    from pipeline.ops.logs import get_logger

    restored = drop_unfinished(location)
    todo = uris
    if len(restored.done):
        ids = pa.array([row_ids.row_id(uri) for uri in uris], pa.string())
        keep = pc.invert(pc.is_in(ids, value_set=restored.done)).to_pylist()
        todo = [uri for uri, wanted in zip(uris, keep, strict=True) if wanted]
    log = get_logger(run_id=run_id, stage="driver")
    if restored.damaged:
        log.warning(
            "parts that did not read back were deleted; their rows are redone",
            parts=restored.damaged[:MAX_NAMED_PARTS],
            count=len(restored.damaged),
        )
    if restored.checkpoints or restored.unfinished_parts or restored.pending_dropped or restored.temporaries:
        log.info(
            "checkpoint restored",
            written=len(uris) - len(todo),
            to_do=len(todo),
            unfinished_parts_deleted=restored.unfinished_parts,
            pending_checkpoints_dropped=restored.pending_dropped,
            temporary_files_deleted=restored.temporaries,
        )
    return todo
