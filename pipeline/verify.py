"""Making an output trustworthy: read the parts back, commit last.

:func:`tally` reads every part back and proves each input is there exactly once;
:func:`manifest_document` builds the ``_SUCCESS`` document and :func:`commit` writes
``_failures.parquet``, then ``_SUCCESS``, and reads it back. What an interrupted attempt left
is made consistent before, by :mod:`pipeline.restore`.
"""

from __future__ import annotations

import platform
import posixpath
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline import __version__, storage
from pipeline.errors import JobFailedError, StorageError
from pipeline.output import (
    DATA_DIR,
    FAILURES,
    MANIFEST,
    MANIFEST_VERSION,
    OutputLocation,
    json_bytes,
)
from pipeline.schema import STATUS_FAILED, STATUS_OK

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from pipeline.config import Config, StorageConfig
    from pipeline.model import ModelSpec

TALLY_COLUMNS = ["row_id", "uri", "status", "reason", "error"]


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


def commit(
    location: OutputLocation,
    result: Tally,
    manifest: dict[str, Any],
    still_held: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Write the dead-letter table, then the manifest last (listing the parts it covers).

    ``still_held`` raises if the job no longer holds the output (its lease lost or given up
    while the dead-letter table was written): then no manifest is written.
    """
    if result.failures is not None:
        location.write_table(FAILURES, result.failures)
    if still_held is not None:
        still_held()
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
