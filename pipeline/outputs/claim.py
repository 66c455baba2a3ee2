"""The claim on an output: a new run, or the unfinished one it resumes, checked against the weights.

:func:`claim` reads the output's state and decides (``run_state.check_can_start``). The config
hash covers what the weights are, not only where: the sha256 of their bytes, read once per run
on the driver (:func:`pipeline.compute.model.read_weights`), is hashed with the settings
(:meth:`pipeline.config.Config.config_hash`) and recorded in ``_run.json`` (``weights_sha256``) and
``_SUCCESS`` (``model.sha256``), whether or not ``model.sha256`` pins it. A resume whose weights
now hold other bytes, at the same path or another, is refused, naming both checksums: one output
never mixes predictions of two models.

A run started by an earlier version recorded the hash of its settings alone, and no checksum.
It resumes when that older hash still matches and every part it wrote holds the checksum read
now in its ``model_sha256`` column: the bytes did not change. Its ``_run.json`` is then rewritten
with the current hash and the checksum, so every later resume checks it like any other. Parts
holding another checksum refuse the resume the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import ResumeRefusedError
from pipeline.outputs import run_state
from pipeline.outputs.layout import DATA_DIR, RUN_STATE, is_temporary

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.run_state import RunState

WEIGHTS_KEY = "weights_sha256"  # in _run.json


def claimed(
    location: OutputLocation,
    config: Config,
    weights_sha256: Callable[[], str],
    *,
    overwrite: bool,
    write: bool = True,
) -> tuple[RunState, str]:
    """The output's state and the config hash to claim it with (``run_state.check_can_start``).

    The weights are read (``weights_sha256``, once per run) unless the output is refused as committed:
    the hash only decides whether an unfinished run may resume. ``write=False`` (``pipeline
    plan``): an older run's state is brought up to date in memory only.
    """
    state = run_state.read_run_state(location)
    if state.committed is not None and not overwrite:
        return state, ""
    digest = weights_sha256()
    checked = check_weights(location, state, config, digest, overwrite=overwrite, write=write)
    return checked, config.config_hash(digest)


@dataclass(frozen=True)
class Claim:
    """What a run finds when it claims an output: its state, and the unfinished run it resumes, if any."""

    state: RunState
    resume_id: str | None  # None: a new run


def claim(
    location: OutputLocation,
    config: Config,
    weights_sha256: Callable[[], str],
    *,
    overwrite: bool,
    write: bool = True,
) -> Claim:
    """Claim the output for this config: a new run, or the unfinished run it may resume; else refused.

    The checks :func:`claimed` and :func:`~pipeline.outputs.run_state.check_can_start` make, in
    that order: the same for ``pipeline run`` (under its lease) and ``pipeline plan`` (``write=False``).
    """
    state, config_hash = claimed(location, config, weights_sha256, overwrite=overwrite, write=write)
    resume_id = run_state.check_can_start(
        state, config.job.run_id, config_hash, overwrite=overwrite, carried=config.input.passthrough_columns
    )
    return Claim(state, resume_id)


def check_weights(
    location: OutputLocation,
    state: RunState,
    config: Config,
    weights_sha256: str,
    *,
    overwrite: bool,
    write: bool = True,
) -> RunState:
    """The run state to claim the output with; refuse an unfinished run made with other weights.

    A run started before the hash covered the weights is brought up to date when its parts show
    the same weights (see the module's docstring).
    """
    started = state.started
    if overwrite or started is None or state.committed is not None:
        return state
    recorded = started.get(WEIGHTS_KEY)
    if recorded is not None:
        if recorded != weights_sha256:
            raise _refusal(started, config, [str(recorded)], weights_sha256)
        return state
    if started.get("config_hash") != config.config_hash():  # other settings: the claim refuses it
        return state
    other = sorted(checksums_in_parts(location) - {weights_sha256})
    if other:
        raise _refusal(started, config, other, weights_sha256)
    current = {**started, "config_hash": config.config_hash(weights_sha256), WEIGHTS_KEY: weights_sha256}
    if not write:
        return dataclasses.replace(state, started=current)
    location.write_json(RUN_STATE, current)
    from pipeline.ops.logs import get_logger

    get_logger(run_id=str(started.get("run_id")), stage="driver").info(
        "run started before its config hash covered the weights' bytes: its parts hold these weights, "
        "so it resumes; _run.json now records their sha256",
        weights_sha256=weights_sha256,
    )
    return dataclasses.replace(state, started=current)


def checksums_in_parts(location: OutputLocation) -> set[str]:
    """The weights' checksums the parts under ``data/`` hold (``model_sha256``); unreadable parts skipped.

    One column, read a batch at a time: dictionary-encoded in Parquet, it costs little to read.
    A part cut short or gone is skipped (restoring deletes it, and its rows are redone); a
    storage outage is raised, never taken for an empty part.
    """
    found: set[str] = set()
    for name in location.list_files(DATA_DIR):
        if not name.endswith(".parquet") or is_temporary(name):
            continue
        uri = location.uri_of(name)
        with storage.translate_errors("read", uri, location.storage_config):
            try:
                with location.fs.open(location.path_of(name), "rb") as handle:
                    for batch in pq.ParquetFile(handle).iter_batches(columns=["model_sha256"]):
                        found.update(str(v) for v in pc.unique(batch.column(0)).to_pylist() if v is not None)
            except (pa.ArrowInvalid, FileNotFoundError):
                continue
    return found


def _refusal(started: dict[str, object], config: Config, recorded: list[str], now: str) -> ResumeRefusedError:
    return ResumeRefusedError(
        f"output holds unfinished run {started.get('run_id')!r} made with weights sha256 "
        f"{', '.join(recorded)}; model.weights ({config.model.weights or 'random init'}) now holds "
        f"sha256 {now}: one output cannot mix two models. Resume with the weights it started "
        "with, or pass --overwrite to start again"
    )
