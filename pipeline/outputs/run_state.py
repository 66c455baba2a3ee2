"""What an output holds before a run starts, and what a run may do there: new, resume, or refused."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import (
    OutputExistsError,
    PipelineError,
    ResumeRefusedError,
    StorageError,
    UnreadableFileError,
)
from pipeline.outputs.layout import DATA_DIR, INPUTS, MANIFEST, RUN_STATE, SUMMARY_TEMPLATE, OutputLocation

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pyarrow as pa
    import pyarrow.fs


@dataclass(frozen=True)
class RunState:
    """What is known about an output before a run starts."""

    committed: dict[str, Any] | None
    started: dict[str, Any] | None
    has_data: bool = False


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()


def read_manifest(location: OutputLocation) -> dict[str, Any]:
    """``_SUCCESS``, which must be a JSON object with the manifest's ``run_id``, ``counts`` and ``layout``.

    :class:`UnreadableFileError` otherwise: not valid JSON (cut short on a full disk by an
    older version), or a JSON document this pipeline did not write as a manifest.
    """
    manifest = location.read_json(MANIFEST)
    fields = {"run_id": str, "counts": dict, "layout": dict}
    missing = [key for key, kind in fields.items() if not isinstance(manifest.get(key), kind)]
    if missing:
        raise UnreadableFileError(
            f"{location.uri_of(MANIFEST)} is not a manifest of this pipeline (no {', '.join(missing)})"
        )
    return manifest


def read_run_state(location: OutputLocation) -> RunState:
    """Read the manifest and run state, if any.

    A manifest that is not one (not valid JSON, or without the manifest's fields) is no
    commit: the run is treated as unfinished, and resuming it writes a new manifest. A
    ``data/`` folder with no file in it is no data: a run killed before it wrote ``_run.json``
    (``_run.json`` is written last when a run starts) leaves one, and is started again.
    """
    from pipeline.ops.logs import get_logger

    committed = None
    if location.exists(MANIFEST):
        try:
            committed = read_manifest(location)
        except UnreadableFileError as exc:
            get_logger(stage="driver").warning(
                "manifest unreadable: the output is NOT committed; this run resumes it and commits again",
                error=str(exc),
            )
    started = location.read_json(RUN_STATE) if location.exists(RUN_STATE) else None
    has_data = committed is None and started is None and bool(location.list_files(DATA_DIR))
    return RunState(committed, started, has_data)


def check_can_start(
    state: RunState, run_id: str | None, config_hash: str, *, overwrite: bool, carried: Sequence[str] = ()
) -> str | None:
    """Decide whether this run may write here; return the run id to resume, if any.

    ``carried``: this run's ``input.passthrough_columns``, named when they are what changed.
    """
    if overwrite:
        return None
    if state.committed is not None:  # committed between committed_here and the lease: say so
        raise OutputExistsError(
            f"output already holds committed run {state.committed.get('run_id')!r} "
            f"(committed {state.committed.get('committed_at')}) since this job started; nothing "
            "was done. Pass --overwrite to run it again from scratch."
        )
    if state.started is None:
        if state.has_data:
            raise ResumeRefusedError(
                f"output holds a {DATA_DIR}/ folder but no {RUN_STATE}: it was not written by this "
                "pipeline, or by a run whose state is lost; choose another output.uri, or pass "
                "--overwrite to delete it"
            )
        return None
    previous = str(state.started.get("run_id"))
    if run_id is not None and run_id != previous:
        raise ResumeRefusedError(
            f"output holds unfinished run {previous!r}, not {run_id!r}; resume it with "
            f"--run-id {previous}, or pass --overwrite to discard it"
        )
    started = [item["name"] for item in state.started.get("passthrough_columns", [])]
    if state.started.get("config_hash") != config_hash and started != list(carried):
        raise ResumeRefusedError(
            f"output holds unfinished run {previous!r} whose parts carry the manifest columns "
            f"{started or 'none'}, not {list(carried) or 'none'} (input.passthrough_columns): one output "
            "cannot mix the two; resume with the same input.passthrough_columns, or pass --overwrite"
        )
    if state.started.get("config_hash") != config_hash:
        raise ResumeRefusedError(
            f"output holds unfinished run {previous!r} made with a different configuration; "
            "resume it with the same configuration, or pass --overwrite to discard it"
        )
    return previous


def committed_by(location: OutputLocation, run_id: str) -> bool:
    """Whether the output's ``_SUCCESS`` is run ``run_id``'s (a signal came once it was written)."""
    try:
        return location.read_json(MANIFEST).get("run_id") == run_id
    except (FileNotFoundError, PipelineError):
        return False


def start_run(location: OutputLocation, inputs: pa.Table, state: dict[str, Any]) -> None:
    """Fix a new run's inputs (``run_inputs.inputs_table``), then its state: ``_run.json``, last."""
    location.prepare()
    location.write_table(INPUTS, inputs)
    location.write_json(RUN_STATE, state)


def write_summary(location: OutputLocation, run_id: str, summary: dict[str, Any]) -> bool:
    """Write ``_summary-<run id>.json``; best effort, so a storage outage cannot hide the run's own error."""
    from pipeline.ops.logs import get_logger

    try:
        location.write_json(SUMMARY_TEMPLATE.format(run_id=run_id), summary)
    except StorageError as exc:
        get_logger(run_id=run_id, stage="driver").warning("run summary not written", error=str(exc))
        return False
    return True
