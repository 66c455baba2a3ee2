"""A table output's runs, by the names people give it: listed from the table's history, one run's rows read.

A table output is named ``iceberg:<namespace.name>`` (in the catalog ``catalog`` describes: the
run's ``output.catalog``, or pyiceberg's own config of the catalog ``pipeline``, else the
embedded SQLite default) or by a Lance dataset's URI (ending ``.lance``, or ``lance:<uri>``),
with ``@<run id>`` to pick a run; without it the latest run committed. Each run is the
properties its snapshot or version carries (run id, config hash, output folder); its rows are
read through pyiceberg or Lance, filtered to its run id (the table's other runs left out),
streamed as Arrow batches. ``inspect``, ``compare``, ``report`` and ``output.previous`` read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import OutputNotFoundError
from pipeline.outputs.tables.target import RUN_ID_PROPERTY

if TYPE_CHECKING:
    from collections.abc import Callable

    import pyarrow as pa

    from pipeline.config import StorageConfig

ICEBERG_PREFIX = "iceberg:"
LANCE_PREFIX = "lance:"


@dataclass(frozen=True)
class TableRuns:
    """A table's runs (their commit properties, oldest first) and a reader of one run's rows."""

    name: str  # as named, without the run
    wanted: str  # the run asked for (``@<run id>``), empty for the latest
    runs: list[dict[str, str]]
    read: Callable[[str, list[str] | None], pa.RecordBatchReader]  # run id, columns (None: all)
    schema: Callable[[], pa.Schema]  # the table's columns as its library reads them back

    def chosen(self) -> dict[str, str]:
        """The properties of the run asked for, else the latest (OutputNotFoundError: none such)."""
        if not self.runs:
            raise OutputNotFoundError(f"no run committed to {self.name}")
        if not self.wanted:
            return self.runs[-1]
        found = next((p for p in reversed(self.runs) if p[RUN_ID_PROPERTY] == self.wanted), None)
        if found is None:
            held = ", ".join(p[RUN_ID_PROPERTY] for p in self.runs)
            raise OutputNotFoundError(f"{self.name} holds no run {self.wanted} (it holds {held})")
        return found


def is_table(uri: str) -> bool:
    """Whether ``uri`` names a table output rather than a folder."""
    base = uri.split("@", 1)[0].rstrip("/")
    return uri.startswith((ICEBERG_PREFIX, LANCE_PREFIX)) or base.endswith(".lance")


def table_runs(uri: str, storage_config: StorageConfig, catalog: dict[str, str] | None = None) -> TableRuns:
    """The runs of the table ``uri`` names (OutputNotFoundError: no such table)."""
    name, _, wanted = uri.partition("@")
    if name.startswith(ICEBERG_PREFIX):
        return _iceberg(name, wanted, storage_config, catalog or {})
    return _lance(name, wanted, storage_config)


def _iceberg(name: str, wanted: str, storage_config: StorageConfig, catalog: dict[str, str]) -> TableRuns:
    """An Iceberg table's runs: its snapshots' properties; a run's rows, its partition scanned."""
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import EqualTo

    from pipeline.outputs.tables.iceberg import load_catalog

    identifier = name.removeprefix(ICEBERG_PREFIX)
    try:
        table = load_catalog(catalog, storage_config).load_table(identifier)
    except NoSuchTableError as exc:
        raise OutputNotFoundError(f"no Iceberg table {identifier} in the catalog") from exc
    runs = [
        {key: str(value) for key, value in snapshot.summary.additional_properties.items()}
        for snapshot in table.metadata.snapshots
        if snapshot.summary is not None and snapshot.summary[RUN_ID_PROPERTY]
    ]

    def read(run_id: str, columns: list[str] | None) -> pa.RecordBatchReader:
        scan = table.scan(
            row_filter=EqualTo(term="run_id", value=run_id), selected_fields=tuple(columns or ["*"])
        )
        return scan.to_arrow_batch_reader()

    return TableRuns(name, wanted, runs, read, lambda: table.schema().as_arrow())


def _lance(name: str, wanted: str, storage_config: StorageConfig) -> TableRuns:
    """A Lance dataset's runs: its versions' transaction properties; a run's rows, filtered."""
    from pipeline.outputs.tables.lance import open_dataset

    uri = name.removeprefix(LANCE_PREFIX)
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

    def read(run_id: str, columns: list[str] | None) -> Any:
        return dataset.scanner(filter=f"run_id = '{run_id}'", columns=columns).to_reader()

    return TableRuns(name, wanted, runs, read, lambda: dataset.schema)
