"""The output's layout: every name the pipeline writes there, and the location that reads and writes them.

Under ``output.uri``::

    _run.json            run id and config hash, written when a run starts
    _inputs.parquet      the run's inputs (row_id, uri), fixed at its start
    _checkpoint/         Ray Data's checkpoint (ids already written)
    _shards/             the shard ledger of a run over shards
    _lease/              the lease of the job writing there
    _summary-<run>.json  what the last attempt of a run did (also on failure)
    data/part-*.parquet  one row per input: predictions, or status=failed + reason
    _failures.parquet    the failed rows alone (dead-letter view), written at commit
    _SUCCESS             the manifest, JSON, written last: no _SUCCESS, no commit

Every storage call of :class:`OutputLocation` raises :class:`~pipeline.errors.StorageError` on
failure, naming the URI and never a credential.
"""

from __future__ import annotations

import json
import posixpath
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UnreadableFileError
from pipeline.ops import redaction
from pipeline.outputs.calls_in_flight import CallsInFlight
from pipeline.storage import atomic_writes

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

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


# output.report: pipeline.review.report's page, written after the commit; _-prefixed like every file
# beside data/, or pyarrow, pandas and Spark reading the output folder try it as Parquet.
REPORT = "_report.html"


PENDING_CHECKPOINT_SUFFIX = ".pending.parquet"  # Ray Data's two-phase checkpoint commit


ATTEMPT_PREFIX = "attempt-"


_ATTEMPT = re.compile(rf"^{ATTEMPT_PREFIX}(\d+)$")


LEASE_DIR = "_lease"  # pipeline.outputs.lease: one writer at a time


# Every name this pipeline writes under an output; nothing else is ever deleted there.
_OWN_FILES = re.compile(
    r"^(?:_SUCCESS|_run\.json|_inputs\.parquet|_?failures\.parquet|_summary-[^/]+\.json|_report\.html"
    rf"|{CHECKPOINT_DIR}/.+|_shards/[^/]+\.json|{LEASE_DIR}/[^/]+|{DATA_DIR}/part-[^/]+\.parquet)$"
)


_TEMP_FILE = re.compile(rf"(?:^|/)\.[^/]+{re.escape(atomic_writes.TEMP_SUFFIX)}$")


FOREIGN_EXAMPLES = 3


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
        """The output through a filesystem that reports its S3 retries to ``sink`` (storage.s3_client)."""
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
        checkpoints (two-phase, per part) and never restores: :mod:`pipeline.outputs.restore` has
        done that already, over every earlier attempt's folder.
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
