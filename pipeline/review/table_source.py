"""A run committed to a table, read back for ``inspect``, ``compare`` and ``report``.

A table output is named ``iceberg:<namespace.name>`` (the catalog from pyiceberg's own config of
the catalog ``pipeline``, ``PYICEBERG_CATALOG__PIPELINE__*`` or ``.pyiceberg.yaml``, else the
embedded SQLite default) or by a Lance dataset's URI (ending ``.lance``, or ``lance:<uri>``), with
``@<run id>`` to pick a run; without it the latest run committed. The run's rows are read through
pyiceberg or Lance into Arrow (the run's partition; the table's other runs are left out), for the
same DuckDB queries as a folder's parts; the manifest is the run's ``_SUCCESS``, in the folder the
table commit names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import OutputNotCommittedError, OutputNotFoundError
from pipeline.outputs.layout import MANIFEST, OutputLocation
from pipeline.outputs.run_state import read_manifest
from pipeline.outputs.tables.target import OUTPUT_PROPERTY, RUN_ID_PROPERTY
from pipeline.schema import EMBEDDING_COLUMN

if TYPE_CHECKING:
    from pipeline.config import StorageConfig

ICEBERG_PREFIX = "iceberg:"
LANCE_PREFIX = "lance:"


@dataclass(frozen=True)
class TableRun:
    """One run of a table: where its folder is, its manifest, and its rows."""

    name: str  # the table output as named, with the run: iceberg:ns.table@run
    location: OutputLocation
    manifest: dict[str, Any]
    rows: pa.Table


def is_table(uri: str) -> bool:
    """Whether ``uri`` names a table output rather than a folder."""
    base = uri.split("@", 1)[0].rstrip("/")
    return uri.startswith((ICEBERG_PREFIX, LANCE_PREFIX)) or base.endswith(".lance")


def open_table_run(uri: str, storage_config: StorageConfig) -> TableRun:
    """The run ``uri`` names (``@<run id>``, else the latest committed) with its rows and manifest."""
    name, _, wanted = uri.partition("@")
    if name.startswith(ICEBERG_PREFIX):
        runs, read = _iceberg(name.removeprefix(ICEBERG_PREFIX), storage_config)
    else:
        runs, read = _lance(name.removeprefix(LANCE_PREFIX), storage_config)
    if not runs:
        raise OutputNotFoundError(f"no run committed to {name}")
    properties = next((found for found in reversed(runs) if found[RUN_ID_PROPERTY] == wanted), None)
    if wanted and properties is None:
        raise OutputNotFoundError(
            f"{name} holds no run {wanted} (it holds {', '.join(p[RUN_ID_PROPERTY] for p in runs)})"
        )
    properties = properties or runs[-1]
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
    return TableRun(f"{name}@{run_id}", location, read_manifest(location), _fixed_vectors(read(run_id)))


def _iceberg(identifier: str, storage_config: StorageConfig) -> tuple[list[dict[str, str]], Any]:
    """The table's runs (snapshot properties, oldest first) and a reader of one run's rows."""
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import EqualTo

    from pipeline.outputs.tables.iceberg import load_catalog

    try:
        table = load_catalog({}, storage_config).load_table(identifier)
    except NoSuchTableError as exc:
        raise OutputNotFoundError(f"no Iceberg table {identifier} in the catalog") from exc
    runs = [
        {key: str(value) for key, value in snapshot.summary.additional_properties.items()}
        for snapshot in table.metadata.snapshots
        if snapshot.summary is not None and snapshot.summary[RUN_ID_PROPERTY]
    ]
    return runs, lambda run_id: table.scan(row_filter=EqualTo(term="run_id", value=run_id)).to_arrow()


def _lance(uri: str, storage_config: StorageConfig) -> tuple[list[dict[str, str]], Any]:
    """The dataset's runs (transaction properties, oldest first) and a reader of one run's rows."""
    from pipeline.outputs.tables.lance import open_dataset

    try:
        dataset = open_dataset(uri, storage_config)
    except (ValueError, FileNotFoundError) as exc:
        raise OutputNotFoundError(f"no Lance dataset at {uri}") from exc
    runs = []
    for version in dataset.versions():
        transaction = dataset.read_transaction(version["version"])
        properties = (transaction.transaction_properties or {}) if transaction is not None else {}
        if RUN_ID_PROPERTY in properties:
            runs.append(dict(properties))
    return runs, lambda run_id: dataset.to_table(filter=f"run_id = '{run_id}'")


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
