"""The commit: the failure budget, then the dead-letter table, then ``_SUCCESS``, written last and read back.

:func:`check_failure_budget` refuses to commit too many failed rows (exit 5). A shard that could
not be read to its end (``failed_shards``) counts against ``output.max_failure_fraction`` as one
failed input, beside the rows it did yield: its records are unknown, and a bad shard must not
pass unnoticed where a bad file would not. :func:`manifest_document` builds the ``_SUCCESS``
document from the run's :class:`RunRecord` and the parts' :class:`~pipeline.outputs.tally.Tally`;
:func:`commit` writes ``_failures.parquet``, then ``_SUCCESS``, and reads it back.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline._version import __version__
from pipeline.errors import FailureBudgetExceededError, JobFailedError, StorageError
from pipeline.outputs.layout import DATA_DIR, FAILURES, MANIFEST, MANIFEST_VERSION, OutputLocation, json_bytes

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config
    from pipeline.outputs.tally import Tally


@dataclass(frozen=True)
class RunRecord:
    """What the manifest says of the run beside what its parts hold: the job's side of ``_SUCCESS``."""

    config: Config
    summary: dict[str, Any]  # RunSummary.as_dict(), as of the read-back
    model: dict[str, Any]  # the model as it ran (pipeline.compute.model.manifest_entry)
    plan: dict[str, Any]  # the resource plan (pipeline.run.placement.ResourcePlan.as_dict)
    config_hash: str
    started_wall: float
    progress: dict[str, Any] | None = None  # this attempt's rows over time; none when nothing was left


def check_failure_budget(record: RunRecord, result: Tally, data_uri: str) -> None:
    """Refuse (exit 5) more failed rows than ``output.max_failure_fraction``."""
    summary, budget = record.summary, record.config.output.max_failure_fraction
    shards = len(result.failed_shards)
    failed, inputs = summary["failed"] + shards, summary["inputs"] + shards
    fraction = failed / inputs if inputs else 0.0
    if fraction > budget:
        needed = math.ceil(fraction * 1000) / 1000
        unread = f" (with {shards} shards that could not be read)" if shards else ""
        raise FailureBudgetExceededError(
            f"{failed} of {inputs} rows failed{unread} ({fraction:.1%}), above "
            f"output.max_failure_fraction={budget}; rows are written "
            f"under {data_uri} (failed rows with their reason) but the run "
            f"is NOT committed. To accept these failures, run the same command again with --set "
            f"output.max_failure_fraction={needed:g}: it resumes run {summary['run_id']} and commits "
            "without redoing a row. To retry the failed inputs, fix them and run again with --overwrite."
        )


def manifest_document(record: RunRecord, result: Tally) -> dict[str, Any]:
    """The ``_SUCCESS`` document of a run (:func:`commit` adds the layout's files and versions it)."""
    summary, model = record.summary, record.model
    document = {
        "run_id": summary["run_id"],
        "job": record.config.job.name,
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
        "config_hash": record.config_hash,
        "config": record.config.to_dict(),
        "model": model,
        "warnings": ["model weights are random (model.random_init)"] if model["random_init"] else [],
        "versions": versions(),
        "resource_plan": record.plan,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.started_wall)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(summary["seconds"], 3),
        "images_per_second": round(summary["images_per_second"], 3),
        "timings_s": {name: round(seconds, 3) for name, seconds in summary["timings"].items()},
        "layout": {"data": DATA_DIR, "failures": FAILURES, "rows": result.rows},
        # input.passthrough_columns, each with the Arrow type its column has in the parts.
        "passthrough_columns": result.carried or [],
    }
    if record.progress is not None:
        document["progress"] = record.progress
    if summary.get("incremental") is not None:  # output.previous: what was carried, computed, dropped
        document["incremental"] = summary["incremental"]
    if summary["input_format"] != "files":
        document["input_format"] = summary["input_format"]
        document["failed_shards"] = result.failed_shards
    return document


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
    write_manifest(location, manifest)
    return manifest


def write_manifest(location: OutputLocation, manifest: dict[str, Any]) -> None:
    """``_SUCCESS`` written and read back as written (a store that kept something else: not committed)."""
    written = json_bytes(manifest)
    try:
        location.write_bytes(MANIFEST, written)
    except StorageError as exc:  # no answer: the PUT may have landed, and what is there decides
        if _reads_back(location, written):
            return
        raise StorageError(
            f"{exc}. The output may or may not be committed: run the same command again to find out "
            "(exit 3 if it is, else it resumes and commits)"
        ) from exc
    if not _reads_back(location, written):  # a store that acknowledged what it did not keep
        raise JobFailedError(f"{location.uri_of(MANIFEST)} does not read back as written; not committed")


def _reads_back(location: OutputLocation, written: bytes) -> bool:
    """Whether ``_SUCCESS`` holds exactly ``written`` (an unanswered read: no)."""
    try:
        return location.read_bytes(MANIFEST) == written
    except (StorageError, FileNotFoundError):
        return False
