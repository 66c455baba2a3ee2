"""An incremental run's previous state taken from a table: one run's snapshot or version, filtered to it.

``output.previous: iceberg:ns.table[@run]`` or a Lance dataset's URI (``…/preds.lance[@run]``),
the names ``inspect`` takes, picks a run of the table (the latest without ``@run``), in the
catalog of ``output.catalog``. The refusals are a folder's: a table or run that is not there
follows ``output.previous_missing``; a run whose folder has no ``_SUCCESS`` (stopped between the
table commit and the manifest) is not committed and refused; a run made with another config
hash is refused unless ``output.previous_other_config: recompute``. The run's inputs and
fingerprints are its folder's ``_inputs.parquet``; its rows are read from the table, filtered to
its run id, and streamed into one carried part: a table's rows have no part file of their own to
copy whole (Iceberg's may be rewritten by a compaction, Lance's are fragments).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError, OutputNotFoundError
from pipeline.outputs.layout import INPUTS, MANIFEST, OutputLocation
from pipeline.outputs.previous import (
    KEY,
    Previous,
    find_previous,
    nothing_there,
    other_config,
    refuse_random_weights,
)
from pipeline.outputs.tables.table_runs import is_table, table_runs
from pipeline.outputs.tables.target import CONFIG_HASH_PROPERTY, OUTPUT_PROPERTY, RUN_ID_PROPERTY

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.config import Config
    from pipeline.outputs.previous import PreviousOutput
    from pipeline.outputs.tables.table_runs import TableRuns


@dataclass(frozen=True)
class TablePrevious:
    """A table's run an incremental run carries rows from: its folder's inputs, the table's rows."""

    name: str  # the table as named, with the run: iceberg:ns.table@run
    folder: Previous  # the run's output folder: its _SUCCESS and _inputs.parquet
    table: TableRuns
    run_id: str

    @property
    def uri(self) -> str:
        """The table and run, as ``_SUCCESS`` and the summary name the previous output."""
        return self.name

    @property
    def manifest(self) -> dict[str, Any]:
        """The run's ``_SUCCESS``."""
        return self.folder.manifest

    #: A table's rows have no part file of their own: they are streamed, never copied whole.
    copies_whole_parts = False

    def parts(self) -> list[str]:
        """One piece: the run's rows in the table (carried into one part, named by the run)."""
        return [self.run_id]

    def rows(self) -> int:
        """How many rows the run holds, as its ``_SUCCESS`` counts them."""
        return self.folder.rows()

    def part_schema(self, _part: str) -> pa.Schema:
        """The run's parts' schema (Iceberg reads vectors back as plain lists), else the table's."""
        parts = self.folder.parts()
        location = self.folder.location
        if parts and location.exists(parts[0]):
            return pq.read_schema(location.path_of(parts[0]), filesystem=location.arrow_fs())
        return self.table.schema()

    def batches(self, part: str, columns: list[str] | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The run's rows from the table, in its parts' types; ``columns``: those of these it has."""
        schema = self.part_schema(part)
        held = self.table.schema().names
        wanted = [
            field for field in schema if field.name in held and (columns is None or field.name in columns)
        ]
        for batch in self.table.read(part, [field.name for field in wanted]):
            arrays = [batch.column(field.name).cast(field.type) for field in wanted]
            typed = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(wanted))
            for start in range(0, typed.num_rows, batch_rows):
                yield typed.slice(start, batch_rows)

    def recorded_fingerprints(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The fingerprints the run's folder recorded, for rows the table holds without theirs."""
        return self.folder.recorded_fingerprints(batch_rows)

    def copy_part(self, part: str, target: OutputLocation, name: str) -> None:
        """Never: a table's rows are streamed (:attr:`copies_whole_parts`)."""
        raise NotImplementedError(f"{self.name}: a table's rows are carried by streaming, not copied")


def find_any_previous(config: Config, config_hash: str) -> tuple[PreviousOutput | None, str | None]:
    """``output.previous``: a table's run (:func:`find_table_previous`) or a folder (``find_previous``)."""
    if config.output.previous is not None and is_table(config.output.previous):
        return find_table_previous(config, config_hash)
    return find_previous(config, config_hash)


def find_table_previous(config: Config, config_hash: str) -> tuple[TablePrevious | None, str | None]:
    """The table run ``output.previous`` names, or None and why the run is a full one (or ConfigError)."""
    named = str(config.output.previous)
    try:
        table = table_runs(named, config.storage, config.output.catalog)
        properties = table.chosen()
    except OutputNotFoundError as exc:
        return None, nothing_there(config, named, str(exc))
    run_id, folder = properties[RUN_ID_PROPERTY], properties.get(OUTPUT_PROPERTY)
    location = OutputLocation.open(folder, config.storage) if folder else None
    if location is None or not location.exists(MANIFEST) or not location.exists(INPUTS):
        raise ConfigError(
            KEY,
            named,
            f"its run {run_id} is not committed (its folder {folder} has no {MANIFEST}: the job stopped "
            "between the table commit and the manifest): an incremental run builds only on a committed "
            "run; finish that run first, or drop output.previous for a full run",
        )
    name = f"{table.name}@{run_id}"
    manifest = location.read_json(MANIFEST)
    refuse_random_weights(config, manifest, named)
    recorded = properties.get(CONFIG_HASH_PROPERTY)
    if (why := other_config(config, name, recorded, config_hash)) is not None:
        return None, why
    return TablePrevious(name, Previous(location, manifest), table, run_id), None
