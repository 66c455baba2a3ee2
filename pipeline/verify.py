"""Making an output trustworthy: restore after a crash, read the parts back, commit last.

:func:`restore_checkpoint` deletes what an interrupted attempt left half-written and says
which inputs are still to do; :func:`tally` reads every part back and proves each input is
there exactly once; :func:`manifest_document` builds the ``_SUCCESS`` document and
:func:`commit` writes ``_failures.parquet``, then ``_SUCCESS``, and reads it back.
"""

from __future__ import annotations

import platform
import posixpath
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline import __version__, storage
from pipeline.errors import JobFailedError, StorageError
from pipeline.output import (
    CHECKPOINT_DIR,
    DATA_DIR,
    FAILURES,
    MANIFEST,
    MANIFEST_VERSION,
    PENDING_CHECKPOINT_SUFFIX,
    OutputLocation,
    is_lease,
    is_temporary,
    json_bytes,
)
from pipeline.schema import STATUS_FAILED, STATUS_OK

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pipeline.config import Config, StorageConfig
    from pipeline.model import ModelSpec

_PART_NUMBER = re.compile(r"-\d+\.parquet$")
TALLY_COLUMNS = ["row_id", "uri", "status", "reason", "error"]
READ_BACK_THREADS = 8  # parts read back at once on restore (one round trip or two each on S3)
MAX_NAMED_PARTS = 5


@dataclass(frozen=True)
class Tally:
    """Outcome counts read back from the committed parts."""

    rows: int
    ok: int
    failed_by_reason: dict[str, int]
    failures: pa.Table | None  # None: written already, part by part (pipeline.shard_verify)
    files: list[dict[str, Any]] = field(default_factory=list)
    carried: list[dict[str, str]] = field(default_factory=list)  # carried columns as the parts hold them
    failed_shards: list[dict[str, str]] = field(default_factory=list)  # shards not read to the end

    @property
    def failed(self) -> int:
        """All failed rows."""
        return sum(self.failed_by_reason.values())


def tally(
    location: OutputLocation,
    storage_config: StorageConfig,
    expected_ids: Iterable[str],
    carried: Sequence[str] = (),
) -> Tally:
    """Read the parts back and prove every input is there exactly once.

    Reads one part at a time and keeps only the ids and the failed rows, so the
    driver holds a few bytes per input, not the predictions. The ``carried`` columns
    must be in every part with one type (kept on the failed rows, for the dead-letter table).
    """
    data_uri = location.uri_of(DATA_DIR)
    root = storage.fs_path(location.uri)
    ids: list[pa.ChunkedArray] = []
    failures: list[pa.Table] = []
    files: list[dict[str, Any]] = []
    ok = 0
    fragments = part_fragments(location, storage_config)
    if not fragments:
        raise JobFailedError(f"no part files under {data_uri}; not committing")
    columns = [*TALLY_COLUMNS, *carried]
    failure_schema = part_schema(fragments[0], columns)
    with storage.translate_errors("read back the parts under", data_uri, storage_config):
        for fragment in fragments:
            if carried and part_schema(fragment, columns) != failure_schema:
                raise JobFailedError(
                    f"part {fragment.path} holds the columns {part_schema(fragment, columns)}, not "
                    f"{failure_schema} as the others; not committing"
                )
            table = fragment.to_table(columns=columns)
            files.append({"path": posixpath.relpath(fragment.path, root), "rows": table.num_rows})
            ids.append(table.column("row_id"))
            statuses = table.column("status")
            ok += int(pc.sum(pc.equal(statuses, STATUS_OK)).as_py() or 0)
            failures.append(table.filter(pc.equal(statuses, STATUS_FAILED)))
    found = pa.chunked_array(
        [chunk for column in ids for chunk in column.chunks], pa.string()
    ).combine_chunks()
    rows = len(found)
    unique = pc.count_distinct(found).as_py() if rows else 0
    if unique != rows:
        raise JobFailedError(f"output has {rows - unique} duplicated rows; not committing")
    expected = pa.array(sorted(set(expected_ids)), pa.string())
    missing = len(expected) - int(pc.sum(pc.is_in(expected, value_set=found)).as_py() or 0)
    extra = rows - int(pc.sum(pc.is_in(found, value_set=expected)).as_py() or 0)
    if missing or extra:
        raise JobFailedError(
            f"output does not match the inputs: {missing} missing, {extra} unexpected; not committing"
        )
    failed = pa.concat_tables([failure_schema.empty_table(), *failures], promote_options="permissive")
    if ok + failed.num_rows != rows:
        raise JobFailedError(
            f"output has {rows - ok - failed.num_rows} rows with an unknown status; not committing"
        )
    by_reason = Counter(str(reason) for reason in failed.column("reason").to_pylist())
    return Tally(
        rows=rows,
        ok=ok,
        failed_by_reason=dict(sorted(by_reason.items())),
        failures=failed,
        files=sorted(files, key=lambda item: str(item["path"])),
        carried=[{"name": name, "type": str(failure_schema.field(name).type)} for name in carried],
    )


def part_fragments(location: OutputLocation, storage_config: StorageConfig | None) -> list[Any]:
    """The part files under ``data/`` (none when there is no such folder)."""
    data_uri = location.uri_of(DATA_DIR)
    try:
        with storage.translate_errors("read back the parts under", data_uri, storage_config):
            dataset = pads.dataset(
                storage.fs_path(data_uri), filesystem=location.arrow_fs(), format="parquet"
            )
            return list(dataset.get_fragments())
    except FileNotFoundError:
        return []


def part_schema(fragment: pads.ParquetFileFragment, columns: list[str]) -> pa.Schema:
    """The schema of ``columns`` in one part; a column it lacks fails the commit."""
    schema = fragment.physical_schema
    missing = [name for name in columns if schema.get_field_index(name) < 0]
    if missing:
        raise JobFailedError(f"part {fragment.path} has no column {', '.join(missing)}; not committing")
    return pa.schema([schema.field(name) for name in columns])


def manifest_document(
    config: Config,
    summary: dict[str, Any],
    spec: ModelSpec,
    plan: dict[str, Any],
    config_hash: str,
    started_wall: float,
    rows: int,
    carried: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The ``_SUCCESS`` document of a run (:func:`commit` adds the layout's files and versions it)."""
    return {
        "run_id": summary["run_id"],
        "job": config.job.name,
        "status": "committed",
        "counts": {
            "inputs": summary["inputs"],
            "succeeded": summary["succeeded"],
            "failed": summary["failed"],
        },
        "empty_manifest_cells": summary["empty_manifest_cells"],
        "failed_by_reason": summary["failed_by_reason"],
        "processed_this_run": summary["processed_this_run"],
        "resumed": summary["resumed"],
        "storage_retries": summary["storage_retries"],
        "config_hash": config_hash,
        "config": config.to_dict(),
        "model": {
            "name": spec.name,
            "sha256": spec.weights_sha256,
            "weights": spec.weights_uri,
            "random_init": spec.random_init,
            "preprocessing": asdict(spec.preprocessing),
            "task": spec.task,
            "embedding": asdict(spec.embedding) if spec.embedding else None,  # dim, dtype, normalized
        },
        "warnings": ["model weights are random (model.random_init)"] if spec.random_init else [],
        "versions": versions(),
        "resource_plan": plan,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(summary["seconds"], 3),
        "images_per_second": round(summary["images_per_second"], 3),
        "timings_s": {name: round(seconds, 3) for name, seconds in summary["timings"].items()},
        "layout": {"data": DATA_DIR, "failures": FAILURES, "rows": rows},
        # input.passthrough_columns, each with the Arrow type its column has in the parts.
        "passthrough_columns": carried or [],
    }


def versions() -> dict[str, str]:
    """Versions recorded in the manifest."""
    import ray
    import torch
    import torchvision

    return {
        "pipeline": __version__,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pyarrow": pa.__version__,
    }


def commit(location: OutputLocation, result: Tally, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the dead-letter table, then the manifest last (listing the parts it covers)."""
    if result.failures is not None:
        location.write_table(FAILURES, result.failures)
    layout = {**manifest.get("layout", {}), "files": result.files, "failed_rows": result.failed}
    manifest = {
        **manifest,
        "manifest_version": MANIFEST_VERSION,
        "layout": layout,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    written = json_bytes(manifest)
    try:
        location.write_bytes(MANIFEST, written)
    except StorageError as exc:  # no answer: the PUT may have landed, and what is there decides
        if _reads_back(location, written):
            return manifest
        raise StorageError(
            f"{exc}. The output may or may not be committed: run the same command again to find out "
            "(exit 3 if it is, else it resumes and commits)"
        ) from exc
    if not _reads_back(location, written):  # a store that acknowledged what it did not keep
        raise JobFailedError(f"{location.uri_of(MANIFEST)} does not read back as written; not committed")
    return manifest


def _reads_back(location: OutputLocation, written: bytes) -> bool:
    """Whether ``_SUCCESS`` holds exactly ``written`` (an unanswered read: no)."""
    try:
        return location.read_bytes(MANIFEST) == written
    except (StorageError, FileNotFoundError):
        return False


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
    from pipeline.logs import get_logger

    restored = drop_unfinished(location)
    todo = uris
    if len(restored.done):
        ids = pa.array([storage.row_id(uri) for uri in uris], pa.string())
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
