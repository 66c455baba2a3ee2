"""Output layout, run state, and the commit.

Under ``output.uri``::

    _run.json            run id and config hash, written when a run starts
    _inputs.parquet      the run's inputs (row_id, uri), fixed at its start
    _checkpoint/         Ray Data's checkpoint (ids already written)
    data/part-*.parquet  one row per input: predictions, or status=failed + reason
    failures.parquet     the failed rows alone (dead-letter view), written at commit
    _SUCCESS             the manifest, JSON, written last: no _SUCCESS, no commit

Before the manifest is written, the committed parts are read back and checked:
every input exactly once, nothing else.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import JobFailedError, OutputExistsError
from pipeline.schema import STATUS_FAILED, STATUS_OK

if TYPE_CHECKING:
    import fsspec

    from pipeline.config import StorageConfig

MANIFEST = "_SUCCESS"
RUN_STATE = "_run.json"
INPUTS = "_inputs.parquet"
CHECKPOINT_DIR = "_checkpoint"
DATA_DIR = "data"
FAILURES = "failures.parquet"


@dataclass(frozen=True)
class OutputLocation:
    """The output URI with its filesystem; paths inside are joined here."""

    uri: str
    fs: fsspec.AbstractFileSystem

    @classmethod
    def open(cls, uri: str, storage_config: StorageConfig) -> OutputLocation:
        """Resolve ``uri`` and its filesystem."""
        uri = storage.normalise(uri)
        return cls(uri, storage.fsspec_filesystem(uri, storage_config))

    def uri_of(self, name: str) -> str:
        """Full URI of a name under the output."""
        return f"{self.uri}/{name}"

    def path_of(self, name: str) -> str:
        """Filesystem path (no scheme) of a name under the output."""
        return posixpath.join(storage.fs_path(self.uri), name)

    def exists(self, name: str) -> bool:
        """Whether a file or directory exists under the output."""
        return bool(self.fs.exists(self.path_of(name)))

    def read_json(self, name: str) -> dict[str, Any]:
        """Load a JSON file under the output."""
        data = json.loads(self.fs.cat_file(self.path_of(name)))
        if not isinstance(data, dict):
            raise JobFailedError(f"{self.uri_of(name)} is not a JSON object")
        return data

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Write a JSON file in one put (atomic on object stores)."""
        self.fs.pipe_file(self.path_of(name), json.dumps(data, indent=2, sort_keys=True).encode())

    def write_table(self, name: str, table: pa.Table) -> None:
        """Write one Parquet file under the output."""
        with self.fs.open(self.path_of(name), "wb") as handle:
            pq.write_table(table, handle)

    def read_inputs(self) -> list[str]:
        """The URIs fixed at the run's start."""
        with self.fs.open(self.path_of(INPUTS), "rb") as handle:
            return [str(uri) for uri in pq.read_table(handle, columns=["uri"]).column("uri").to_pylist()]

    def clear(self) -> None:
        """Remove everything under the output (``--overwrite``)."""
        root = storage.fs_path(self.uri)
        if self.fs.exists(root):
            self.fs.rm(root, recursive=True)

    def prepare(self) -> None:
        """Create the output directory where the filesystem has directories."""
        self.fs.makedirs(self.path_of(DATA_DIR), exist_ok=True)


@dataclass(frozen=True)
class RunState:
    """What is known about an output before a run starts."""

    committed: dict[str, Any] | None
    started: dict[str, Any] | None


def inspect(location: OutputLocation) -> RunState:
    """Read the manifest and run state, if any."""
    committed = location.read_json(MANIFEST) if location.exists(MANIFEST) else None
    started = location.read_json(RUN_STATE) if location.exists(RUN_STATE) else None
    return RunState(committed, started)


def check_can_start(state: RunState, run_id: str | None, config_hash: str, *, overwrite: bool) -> str | None:
    """Decide whether this run may write here; return the run id to resume, if any."""
    if overwrite:
        return None
    if state.committed is not None:
        raise OutputExistsError(
            f"output already holds committed run {state.committed.get('run_id')!r} "
            f"(finished {state.committed.get('finished_at')}); nothing to do. "
            "Pass --overwrite to run it again from scratch."
        )
    if state.started is None:
        return None
    previous = str(state.started.get("run_id"))
    if run_id is not None and run_id != previous:
        raise OutputExistsError(
            f"output holds unfinished run {previous!r}, not {run_id!r}; resume it with "
            f"--run-id {previous}, or pass --overwrite to discard it"
        )
    if state.started.get("config_hash") != config_hash:
        raise OutputExistsError(
            f"output holds unfinished run {previous!r} made with a different configuration; "
            "resume it with the same configuration, or pass --overwrite to discard it"
        )
    return previous


@dataclass(frozen=True)
class Tally:
    """Outcome counts read back from the committed parts."""

    rows: int
    ok: int
    failed_by_reason: dict[str, int]
    failures: pa.Table

    @property
    def failed(self) -> int:
        """All failed rows."""
        return sum(self.failed_by_reason.values())


def tally(location: OutputLocation, storage_config: StorageConfig, expected_ids: set[str]) -> Tally:
    """Read the parts back and prove every input is there exactly once."""
    data_uri = location.uri_of(DATA_DIR)
    dataset = pads.dataset(
        storage.fs_path(data_uri),
        filesystem=storage.arrow_filesystem(data_uri, storage_config),
        format="parquet",
    )
    table = dataset.to_table(columns=["row_id", "uri", "status", "reason", "error"])
    ids = table.column("row_id")
    unique = pc.count_distinct(ids).as_py()
    if unique != table.num_rows:
        raise JobFailedError(f"output has {table.num_rows - unique} duplicated rows; not committing")
    found = set(ids.to_pylist())
    missing, extra = expected_ids - found, found - expected_ids
    if missing or extra:
        raise JobFailedError(
            f"output does not match the inputs: {len(missing)} missing, {len(extra)} unexpected; not committing"
        )
    statuses = table.column("status")
    failures = table.filter(pc.equal(statuses, STATUS_FAILED))
    ok = int(pc.sum(pc.equal(statuses, STATUS_OK)).as_py() or 0)
    by_reason = Counter(str(reason) for reason in failures.column("reason").to_pylist())
    return Tally(rows=table.num_rows, ok=ok, failed_by_reason=dict(sorted(by_reason.items())), failures=failures)


def commit(location: OutputLocation, result: Tally, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the dead-letter table, then the manifest last."""
    location.write_table(FAILURES, result.failures)
    manifest = {**manifest, "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    location.write_json(MANIFEST, manifest)
    return manifest
