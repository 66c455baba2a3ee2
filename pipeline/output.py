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
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

from pipeline import atomic_writes, redaction, storage
from pipeline.calls_in_flight import CallsInFlight
from pipeline.errors import (
    JobFailedError,
    OutputExistsError,
    PipelineError,
    ResumeRefusedError,
    StorageError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    import fsspec

    from pipeline.config import StorageConfig

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
_TEMP_FILE = re.compile(rf"(?:^|/)\.[^/]+{re.escape(atomic_writes.TEMP_SUFFIX)}$")
FOREIGN_EXAMPLES = 3


class UnreadableFileError(JobFailedError):
    """A bookkeeping file under the output is not what this pipeline writes (e.g. cut short)."""


def json_bytes(data: dict[str, Any]) -> bytes:
    """A JSON file's bytes as this pipeline writes them: indented, keys sorted, secrets scrubbed."""
    return redaction.scrub(json.dumps(data, indent=2, sort_keys=True)).encode()


def is_own(name: str) -> bool:
    """Whether ``name`` (relative to the output) is one of the files this pipeline writes."""
    return bool(_OWN_FILES.match(name)) or is_temporary(name)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is the temporary file of a write in progress, or of one a crash cut short."""
    return bool(_TEMP_FILE.search(name))


def is_lease(name: str) -> bool:
    """Whether ``name`` is a lease file."""
    return name.startswith(f"{LEASE_DIR}/")


@dataclass(frozen=True)
class OutputLocation:
    """The output URI with its filesystem; paths inside are joined here."""

    uri: str
    fs: fsspec.AbstractFileSystem
    storage_config: StorageConfig | None = field(default=None, compare=False)
    calls: CallsInFlight = field(default_factory=CallsInFlight, compare=False)  # read by the lease

    @classmethod
    def open(cls, uri: str, storage_config: StorageConfig) -> OutputLocation:
        """Resolve ``uri`` and its filesystem."""
        uri = storage.normalise(uri)
        return cls(uri, storage.fsspec_filesystem(uri, storage_config), storage_config)

    def counting_retries(self, sink: Any) -> OutputLocation:
        """The output through a filesystem that reports its S3 retries to ``sink`` (pipeline.s3_client)."""
        if not storage.is_remote(self.uri) or self.storage_config is None:
            return self
        return replace(self, fs=storage.fsspec_filesystem(self.uri, self.storage_config, retry_sink=sink))

    def uri_of(self, name: str) -> str:
        """Full URI of a name under the output."""
        return f"{self.uri}/{name}"

    def path_of(self, name: str) -> str:
        """Filesystem path (no scheme) of a name under the output."""
        return posixpath.join(storage.fs_path(self.uri), name)

    @contextmanager
    def _errors(self, action: str, name: str | None = None) -> Iterator[None]:
        """One storage call: its failure as a StorageError, and noted in :attr:`calls` while it waits."""
        uri = self.uri_of(name) if name else self.uri
        with (
            self.calls.running(f"{action} {redaction.redact_url(uri)}"),
            storage.translate_errors(action, uri, self.storage_config),
        ):
            yield

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
            atomic_writes.write_atomic(self.fs, self.uri_of(name), data)

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
        """Write a JSON file at once (:func:`json_bytes`); return the bytes written."""
        text = json_bytes(data)
        self.write_bytes(name, text)
        return text

    def write_table(self, name: str, table: pa.Table) -> None:
        """Write one Parquet file under the output."""
        with self._errors("write", name), self.fs.open(self.path_of(name), "wb") as handle:
            pq.write_table(table, handle)

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file under the output (``columns``: only these)."""
        with self._errors("read", name), self.fs.open(self.path_of(name), "rb") as handle:
            return pq.read_table(handle, columns=columns)

    def read_inputs(self) -> list[str]:
        """The URIs fixed at the run's start."""
        return [str(uri) for uri in self.read_table(INPUTS, ["uri"]).column("uri").to_pylist()]

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
        checkpoints (two-phase, per part) and never restores: :func:`pipeline.restore.restore_checkpoint`
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


def inspect(location: OutputLocation) -> RunState:
    """Read the manifest and run state, if any.

    A manifest that is not one (not valid JSON, or without the manifest's fields) is no
    commit: the run is treated as unfinished, and resuming it writes a new manifest. A
    ``data/`` folder with no file in it is no data: a run killed before it wrote ``_run.json``
    (``_run.json`` is written last when a run starts) leaves one, and is started again.
    """
    from pipeline.logs import get_logger

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
    from pipeline.logs import get_logger

    try:
        location.write_json(SUMMARY_TEMPLATE.format(run_id=run_id), summary)
    except StorageError as exc:
        get_logger(run_id=run_id, stage="driver").warning("run summary not written", error=str(exc))
        return False
    return True
