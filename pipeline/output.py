"""Output layout, run state, and the commit.

Under ``output.uri``::

    _run.json            run id and config hash, written when a run starts
    _inputs.parquet      the run's inputs (row_id, uri), fixed at its start
    _checkpoint/         Ray Data's checkpoint (ids already written)
    _summary-<run>.json  what the last attempt of a run did (also on failure)
    data/part-*.parquet  one row per input: predictions, or status=failed + reason
    _failures.parquet    the failed rows alone (dead-letter view), written at commit
    _SUCCESS             the manifest, JSON, written last: no _SUCCESS, no commit

Before the manifest is written, the parts are read back and checked: every
input exactly once, nothing else (:mod:`pipeline.verify`). The manifest lists
the part files it covers.
Every storage call here raises :class:`~pipeline.errors.StorageError` on failure,
naming the URI and never a credential.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

from pipeline import redaction, storage
from pipeline.errors import (
    InputError,
    JobFailedError,
    OutputExistsError,
    PipelineError,
    ResumeRefusedError,
    StorageError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import fsspec

    from pipeline.config import InputConfig, StorageConfig

MANIFEST = "_SUCCESS"
MANIFEST_VERSION = 1
RUN_STATE = "_run.json"
INPUTS = "_inputs.parquet"
CHECKPOINT_DIR = "_checkpoint"
DATA_DIR = "data"
# _-prefixed so pyarrow, pandas and Spark (recursiveFileLookup) reading the output folder skip
# it: they would count each failed row twice, here and in data/. DuckDB skips no name: its
# readers glob data/ (docs/storage.md, "Reading with other tools").
FAILURES = "_failures.parquet"
SUMMARY_TEMPLATE = "_summary-{run_id}.json"
# output.report: pipeline.report's page, written after the commit; _-prefixed like every file
# beside data/, or pyarrow, pandas and Spark reading the output folder try it as Parquet.
REPORT = "_report.html"
PENDING_CHECKPOINT_SUFFIX = ".pending.parquet"  # Ray Data's two-phase checkpoint commit
ATTEMPT_PREFIX = "attempt-"
_ATTEMPT = re.compile(rf"^{ATTEMPT_PREFIX}(\d+)$")
LEASE_DIR = "_lease"  # pipeline.lease: one writer at a time
# Every name this pipeline writes under an output; nothing else is ever deleted there.
_OWN_FILES = re.compile(
    r"^(?:_SUCCESS|_run\.json|_inputs\.parquet|_?failures\.parquet|_summary-[^/]+\.json|_report\.html"
    rf"|{CHECKPOINT_DIR}/.+|_shards/[^/]+\.json|{LEASE_DIR}/[^/]+|{DATA_DIR}/part-[^/]+\.parquet)$"
)
_TEMP_FILE = re.compile(rf"(?:^|/)\.[^/]+{re.escape(storage.TEMP_SUFFIX)}$")
FOREIGN_EXAMPLES = 3


class UnreadableFileError(JobFailedError):
    """A bookkeeping file under the output is not what this pipeline writes (e.g. cut short)."""


def is_own(name: str) -> bool:
    """Whether ``name`` (relative to the output) is one of the files this pipeline writes."""
    return bool(_OWN_FILES.match(name) or _TEMP_FILE.search(name))


def is_lease(name: str) -> bool:
    """Whether ``name`` is a lease file."""
    return name.startswith(f"{LEASE_DIR}/")


@dataclass(frozen=True)
class OutputLocation:
    """The output URI with its filesystem; paths inside are joined here."""

    uri: str
    fs: fsspec.AbstractFileSystem
    storage_config: StorageConfig | None = field(default=None, compare=False)

    @classmethod
    def open(cls, uri: str, storage_config: StorageConfig) -> OutputLocation:
        """Resolve ``uri`` and its filesystem."""
        uri = storage.normalise(uri)
        return cls(uri, storage.fsspec_filesystem(uri, storage_config), storage_config)

    def uri_of(self, name: str) -> str:
        """Full URI of a name under the output."""
        return f"{self.uri}/{name}"

    def path_of(self, name: str) -> str:
        """Filesystem path (no scheme) of a name under the output."""
        return posixpath.join(storage.fs_path(self.uri), name)

    def _errors(self, action: str, name: str | None = None) -> AbstractContextManager[None]:
        return storage.translate_errors(action, self.uri_of(name) if name else self.uri, self.storage_config)

    def exists(self, name: str) -> bool:
        """Whether a file or directory exists under the output."""
        with self._errors("check", name):
            return bool(self.fs.exists(self.path_of(name)))

    def read_bytes(self, name: str) -> bytes:
        """The bytes of a file under the output (``FileNotFoundError`` if there is none)."""
        with self._errors("read", name):
            return bytes(self.fs.cat_file(self.path_of(name)))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a file at once: a reader (or a full disk) never leaves a part of it."""
        with self._errors("write", name):
            storage.write_atomic(self.fs, self.uri_of(name), data)

    def read_json(self, name: str) -> dict[str, Any]:
        """Load a JSON object under the output; :class:`UnreadableFileError` if it is not one."""
        raw = self.read_bytes(name)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise UnreadableFileError(
                f"{self.uri_of(name)} is not valid JSON ({len(raw)} bytes: {exc})"
            ) from exc
        if not isinstance(data, dict):
            raise UnreadableFileError(f"{self.uri_of(name)} is not a JSON object")
        return data

    def write_json(self, name: str, data: dict[str, Any]) -> bytes:
        """Write a JSON file at once, secrets scrubbed first; return the bytes written."""
        text = redaction.scrub(json.dumps(data, indent=2, sort_keys=True)).encode()
        self.write_bytes(name, text)
        return text

    def write_table(self, name: str, table: pa.Table) -> None:
        """Write one Parquet file under the output."""
        with self._errors("write", name), self.fs.open(self.path_of(name), "wb") as handle:
            pq.write_table(table, handle)

    def _read_inputs_column(self, column: str) -> list[str]:
        with self._errors("read", INPUTS), self.fs.open(self.path_of(INPUTS), "rb") as handle:
            return [
                str(value) for value in pq.read_table(handle, columns=[column]).column(column).to_pylist()
            ]

    def read_inputs(self) -> list[str]:
        """The URIs fixed at the run's start."""
        return self._read_inputs_column("uri")

    def read_input_ids(self) -> list[str]:
        """The row ids fixed at the run's start."""
        return self._read_inputs_column("row_id")

    def list_files(self, name: str = "") -> list[str]:
        """Names (relative to the output) of the files under one of its folders, or under all of it.

        Empty if there is none. An output that is itself a file lists as its own name.
        """
        root = storage.fs_path(self.uri)
        path = self.path_of(name) if name else root
        with self._errors("list", name or None):
            if not self.fs.exists(path):
                return []
            paths = self.fs.find(path)
        return sorted(
            posixpath.relpath(str(found), root) if str(found) != root else posixpath.basename(root)
            for found in paths
        )

    def clear(self) -> int:
        """Delete this pipeline's own files under the output (``--overwrite``); return how many.

        Only names of the layout above are deleted, never another file, and never the
        lease the running job holds (``_lease/``).
        """
        return self.delete(name for name in self.list_files() if is_own(name) and not is_lease(name))

    def prepare(self) -> None:
        """Create the output directory where the filesystem has directories."""
        with self._errors("create", DATA_DIR):
            self.fs.makedirs(self.path_of(DATA_DIR), exist_ok=True)

    def new_checkpoint_dir(self) -> str:
        """A fresh ``_checkpoint/attempt-<n>`` folder (name relative to the output) for this attempt.

        Each attempt gives Ray Data an empty checkpoint path, so Ray only writes
        checkpoints (two-phase, per part) and never restores: :func:`restore_checkpoint`
        has done that already, over every earlier attempt's folder.
        """
        root = self.path_of(CHECKPOINT_DIR)
        with self._errors("list", CHECKPOINT_DIR):
            entries = self.fs.ls(root, detail=False) if self.fs.exists(root) else []
        attempts = [
            int(match.group(1))
            for entry in entries
            if (match := _ATTEMPT.match(posixpath.basename(str(entry).rstrip("/"))))
        ]
        return f"{CHECKPOINT_DIR}/{ATTEMPT_PREFIX}{max(attempts, default=0) + 1:03d}"

    def arrow_fs(self) -> pyarrow.fs.FileSystem:
        """A pyarrow view of this location's filesystem."""
        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(self.fs))

    def delete(self, names: Iterable[str]) -> int:
        """Delete files (names relative to the output); return how many."""
        count = 0
        for name in names:
            with self._errors("delete", name):
                self.fs.rm_file(self.path_of(name))
            count += 1
        return count


@dataclass(frozen=True)
class RunState:
    """What is known about an output before a run starts."""

    committed: dict[str, Any] | None
    started: dict[str, Any] | None
    has_data: bool = False


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()


def inspect(location: OutputLocation) -> RunState:
    """Read the manifest and run state, if any.

    A manifest that is not valid JSON (cut short by an older version on a full disk) is
    no commit: the run is treated as unfinished, and resuming it writes a new manifest.
    """
    from pipeline.logs import get_logger

    committed = None
    if location.exists(MANIFEST):
        try:
            committed = location.read_json(MANIFEST)
        except UnreadableFileError as exc:
            get_logger(stage="driver").warning(
                "manifest unreadable: the output is NOT committed; this run resumes it and commits again",
                error=str(exc),
            )
    started = location.read_json(RUN_STATE) if location.exists(RUN_STATE) else None
    has_data = committed is None and started is None and location.exists(DATA_DIR)
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


def start_run(location: OutputLocation, uris: list[str], state: dict[str, Any]) -> None:
    """Fix a new run's inputs (ids of the full URIs; URIs stored with signatures masked), then its state."""
    location.prepare()
    ids = [storage.row_id(uri) for uri in uris]
    location.write_table(
        INPUTS, pa.table({"row_id": ids, "uri": [redaction.redact_url(uri) for uri in uris]})
    )
    location.write_json(RUN_STATE, state)


def inputs_of_run(
    location: OutputLocation,
    source: InputConfig,
    storage_config: StorageConfig,
    run_id: str,
    *,
    resumed: bool,
) -> storage.Listing:
    """The run's inputs: listed now, or, on resume, those fixed when the run started.

    A resumed manifest run reads the manifest again (``_inputs.parquet`` keeps URIs with
    their signatures masked, so it cannot be read from) and must find the same inputs.
    """
    if resumed and not source.is_manifest:
        return storage.Listing(location.read_inputs())
    listing = storage.list_inputs(source, storage_config)
    if resumed:
        fixed = set(location.read_input_ids())
        now = {storage.row_id(uri) for uri in listing.uris}
        if now != fixed:
            raise InputError(
                f"manifest {source.uri} changed since run {run_id!r} started: "
                f"{len(now - fixed)} inputs added, {len(fixed - now)} removed; resume with the "
                "manifest it started with, or pass --overwrite to start again"
            )
    if listing.empty_cells:
        from pipeline.logs import get_logger

        get_logger(run_id=run_id, stage="driver").warning(
            "manifest cells without a URI skipped", count=listing.empty_cells, manifest=source.uri
        )
    return listing


def write_summary(location: OutputLocation, run_id: str, summary: dict[str, Any]) -> bool:
    """Write ``_summary-<run id>.json``; best effort, so a storage outage cannot hide the run's own error."""
    from pipeline.logs import get_logger

    try:
        location.write_json(SUMMARY_TEMPLATE.format(run_id=run_id), summary)
    except StorageError as exc:
        get_logger(run_id=run_id, stage="driver").warning("run summary not written", error=str(exc))
        return False
    return True
