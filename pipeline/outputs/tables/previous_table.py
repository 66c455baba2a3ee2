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
from pipeline.outputs.previous import KEY, Previous, find_previous, nothing_there, other_config
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

    def parts(self) -> list[str]:
        """One piece: the run's rows in the table (carried into one part, named by the run)."""
        return [self.run_id]

    def inputs(self) -> pa.Table:
        """The run's inputs and fingerprints, from its folder's ``_inputs.parquet``."""
        return self.folder.inputs()

    def ids_and_statuses(self, part: str) -> pa.Table:
        """The run's ``row_id`` and ``status`` columns, read from the table."""
        return self.table.read(part, ["row_id", "status"]).read_all()

    def batches(self, part: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The run's rows from the table, batch by batch, in the schema its parts had."""
        schema = self._schema()

        def rows() -> Iterator[pa.RecordBatch]:
            for batch in self.table.read(part, None):
                columns = [batch.column(field.name).cast(field.type) for field in schema]
                yield pa.RecordBatch.from_arrays(columns, schema=schema)

        return schema, rows()

    def _schema(self) -> pa.Schema:
        """The run's parts' schema (Iceberg reads vectors back as plain lists), else the table's."""
        parts = self.folder.parts()
        location = self.folder.location
        if parts and location.exists(parts[0]):
            return pq.read_schema(location.path_of(parts[0]), filesystem=location.arrow_fs())
        return self.table.schema()


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
    recorded = properties.get(CONFIG_HASH_PROPERTY)
    if (why := other_config(config, name, recorded, config_hash)) is not None:
        return None, why
    return TablePrevious(name, Previous(location, location.read_json(MANIFEST)), table, run_id), None
