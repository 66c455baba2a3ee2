"""Reading the parts back: every input exactly once, counted by outcome, before anything is committed."""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline import storage
from pipeline.errors import JobFailedError
from pipeline.outputs.layout import DATA_DIR, OutputLocation
from pipeline.schema import STATUS_FAILED, STATUS_OK

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pipeline.config import StorageConfig


TALLY_COLUMNS = ["row_id", "uri", "status", "reason", "error"]


@dataclass(frozen=True)
class Tally:
    """Outcome counts read back from the committed parts."""

    rows: int
    ok: int
    failed_by_reason: dict[str, int]
    failures: pa.Table | None  # None: written already, part by part (pipeline.outputs.shard_parts)
    files: list[dict[str, Any]] = field(default_factory=list)
    carried: list[dict[str, str]] = field(default_factory=list)  # carried columns as the parts hold them
    failed_shards: list[dict[str, str]] = field(default_factory=list)  # shards not read to the end
    counted_inputs: int | None = (
        None  # inputs known only once read back (shards: their records); None: as listed
    )

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
    check_statuses(rows, ok, failed.num_rows)
    by_reason = Counter(str(reason) for reason in failed.column("reason").to_pylist())
    return Tally(
        rows=rows,
        ok=ok,
        failed_by_reason=dict(sorted(by_reason.items())),
        failures=failed,
        files=sorted(files, key=lambda item: str(item["path"])),
        carried=[{"name": name, "type": str(failure_schema.field(name).type)} for name in carried],
    )


def check_statuses(rows: int, ok: int, failed: int) -> None:
    """Every row is ``ok`` or ``failed``: a part with another status is not committed."""
    if ok + failed != rows:
        raise JobFailedError(f"output has {rows - ok - failed} rows with an unknown status; not committing")


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
