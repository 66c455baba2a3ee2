"""A run committed to a table, read back for ``inspect``, ``compare`` and ``report``.

The table is named as :mod:`pipeline.outputs.tables.table_runs` says (``iceberg:<namespace.name>``
in pyiceberg's own config of the catalog ``pipeline``, ``PYICEBERG_CATALOG__PIPELINE__*`` or
``.pyiceberg.yaml``, else the embedded SQLite default; a Lance dataset's URI), with ``@<run id>``
to pick a run, else the latest. The run's rows are read into Arrow for the same DuckDB queries
as a folder's parts; the manifest is the run's ``_SUCCESS``, in the folder the table commit names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import OutputNotCommittedError
from pipeline.outputs.layout import MANIFEST, OutputLocation
from pipeline.outputs.run_state import read_manifest
from pipeline.outputs.tables.table_runs import is_table, table_runs
from pipeline.outputs.tables.target import OUTPUT_PROPERTY, RUN_ID_PROPERTY
from pipeline.schema import EMBEDDING_COLUMN

if TYPE_CHECKING:
    from pipeline.config import StorageConfig

__all__ = ["TableRun", "is_table", "open_table_run"]


@dataclass(frozen=True)
class TableRun:
    """One run of a table: where its folder is, its manifest, and its rows."""

    name: str  # the table output as named, with the run: iceberg:ns.table@run
    location: OutputLocation
    manifest: dict[str, Any]
    rows: pa.Table


def open_table_run(uri: str, storage_config: StorageConfig) -> TableRun:
    """The run ``uri`` names (``@<run id>``, else the latest committed) with its rows and manifest."""
    table = table_runs(uri, storage_config)
    properties, name = table.chosen(), table.name
    run_id, folder = properties[RUN_ID_PROPERTY], properties.get(OUTPUT_PROPERTY)
    if folder is None:
        raise OutputNotCommittedError(
            f"{name}'s run {run_id} names no output folder: not committed by the pipeline"
        )
    location = OutputLocation.open(folder, storage_config)
    if not location.exists(MANIFEST):
        raise OutputNotCommittedError(
            f"{name} holds run {run_id}, but its folder {folder} has no {MANIFEST} yet (the job stopped "
            "between the two commits): run the same job again to finish it"
        )
    rows = table.read(run_id, None).read_all()
    return TableRun(f"{name}@{run_id}", location, read_manifest(location), _fixed_vectors(rows))


def _fixed_vectors(rows: pa.Table) -> pa.Table:
    """``embedding`` as the fixed-size list the parts hold (Iceberg reads it back as a plain list)."""
    index = rows.schema.get_field_index(EMBEDDING_COLUMN)
    if index < 0 or pa.types.is_fixed_size_list(rows.schema.field(index).type):
        return rows
    column = rows.column(index)
    lengths = pc.drop_null(pc.list_value_length(column))
    if len(lengths) == 0:
        return rows
    vector = pa.list_(column.type.value_type, int(lengths[0].as_py()))
    return rows.set_column(index, pa.field(EMBEDDING_COLUMN, vector), column.cast(vector))
