"""The Iceberg target: the verified parts added, as they are, to one table in ONE snapshot.

``add_files`` references the Parquet parts where the run wrote them (nothing is copied), so the
parts stay the data files of the table: the output folder must outlive the table's snapshots
that name it. Results and failures share one table, as they share the parts: a failure is a
row with ``status = 'failed'`` and its reason, the contract of the Parquet output. The table is
partitioned by ``truncate(8)`` of ``run_id``: the run's UTC date (run ids start ``YYYYMMDD``),
uniform within each part, so a nightly append lands in its day's partition and ``add_files``
infers the partition from each part's statistics (a date transform would need a timestamp
column the parts do not have). The catalog comes from ``output.catalog`` (an embedded SQL
catalog on SQLite by default; REST or Glue with their own properties in production).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from pipeline.errors import StorageError, TableCommitRefusedError
from pipeline.ops.logs import get_logger
from pipeline.outputs.tables.target import RUN_ID_PROPERTY, s3_endpoint

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from pipeline.config import Config, StorageConfig
    from pipeline.outputs.layout import OutputLocation

CATALOG_NAME = "pipeline"
DEFAULT_CATALOG_FILE = "pipeline-catalog.sqlite"
DEFAULT_WAREHOUSE = "pipeline-warehouse"
PARTITION_FIELD = "run_date"  # truncate(8) of run_id
CATALOG_LOAD_TRIES = 3  # a new SQL catalog loaded by two runs at once: both create its tables
COMMIT_TRIES = 5  # another writer's snapshot landed first: refresh, look for the run again, retry
# pyiceberg retries a lost append itself, without looking for the run id first: off, so the
# retry above, which does, is the one (a table made before this keeps pyiceberg's, then ours).
TABLE_PROPERTIES = {"commit.retry.num-retries": "0"}


def catalog_properties(catalog: dict[str, str], storage_config: StorageConfig) -> dict[str, str]:
    """The catalog's properties: ``output.catalog``, else the embedded SQLite default, and S3's endpoint.

    pyiceberg's own config of the catalog ``pipeline`` (``.pyiceberg.yaml``,
    ``PYICEBERG_CATALOG__PIPELINE__*``) counts as naming one; ``storage``'s S3 endpoint and
    region are added unless set.
    """
    from pyiceberg.utils.config import Config as PyicebergConfig

    configured = {
        key: str(value) for key, value in (PyicebergConfig().get_catalog_config(CATALOG_NAME) or {}).items()
    }
    properties = {**configured, **catalog}  # read now: pyiceberg's own copy is read once, at import
    if not {"type", "uri"} & {*properties, *configured}:
        properties["type"] = "sql"
        properties["uri"] = "sqlite:///" + str(Path(DEFAULT_CATALOG_FILE).resolve())
    if properties.get("type") == "sql" and "warehouse" not in {*properties, *configured}:
        properties["warehouse"] = Path(DEFAULT_WAREHOUSE).resolve().as_uri()
    for key, value in s3_endpoint(storage_config).items():
        properties.setdefault(f"s3.{key}", value)
    return properties


def load_catalog(catalog: dict[str, str], storage_config: StorageConfig) -> Catalog:
    """The catalog these properties (and pyiceberg's own config) describe.

    A SQL catalog creates its tables when first loaded, checking first: two runs loading a new
    one at once both create, and the later fails with its database's "already exists". Loaded
    again, it finds them.
    """
    from pyiceberg.catalog import load_catalog as load

    properties = catalog_properties(catalog, storage_config)
    for attempt in range(CATALOG_LOAD_TRIES):
        try:
            return load(CATALOG_NAME, **properties)
        except Exception as exc:
            if attempt == CATALOG_LOAD_TRIES - 1 or "already exists" not in str(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class IcebergTarget:
    """``output.table`` in ``output.catalog``: created on the first run, appended to by each."""

    format = "iceberg"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = str(config.output.table)
        self._catalog: Catalog | None = None

    def catalog(self) -> Catalog:
        """The catalog, loaded once (a SQL catalog opens its database when loaded)."""
        if self._catalog is None:
            self._catalog = load_catalog(self.config.output.catalog, self.config.storage)
        return self._catalog

    def _table(self) -> Table | None:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog().load_table(self.name)
        except NoSuchTableError:
            return None

    def committed(self, run_id: str) -> int | None:
        """The snapshot whose summary carries ``run_id`` (snapshots expired away are not seen)."""
        table = self._table()
        return None if table is None else snapshot_of(table, run_id)

    def commit(self, location: OutputLocation, files: list[str], properties: dict[str, str]) -> int:
        """``add_files`` of the parts in one snapshot carrying ``properties``; its id."""
        from pyiceberg.exceptions import CommitFailedException

        uris = [location.uri_of(path) for path in files]
        run_id = properties[RUN_ID_PROPERTY]
        table = self._table() or self._create(location, files[0])
        for attempt in range(COMMIT_TRIES):
            if (found := snapshot_of(table, run_id)) is not None:
                raise TableCommitRefusedError(
                    f"{self.name} already holds run {run_id} (snapshot {found}); a run is committed once"
                )
            try:
                table.add_files(uris, snapshot_properties=properties)
            except CommitFailedException:  # the table's optimistic concurrency: another commit first
                if attempt == COMMIT_TRIES - 1:
                    raise
                get_logger(stage="driver").warning(
                    "table commit lost to another writer's; refreshed, retrying", table=self.name
                )
                table = table.refresh()
                continue
            except OSError as exc:
                raise StorageError(f"could not add the parts to {self.name}: {exc}") from exc
            snapshot = table.current_snapshot()
            assert snapshot is not None  # noqa: S101  # add_files just made one
            return int(snapshot.snapshot_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def finish(self) -> None:
        """Nothing follows an Iceberg commit."""

    def _create(self, location: OutputLocation, first_part: str) -> Table:
        """The table, with the parts' schema and the run-date partition, made in one catalog commit.

        Another run may create it at the same moment: the namespace and the table are each
        made once, the loser loads the winner's. The partition spec is part of the creating
        commit (a create-table transaction), never a second commit another writer's append could
        race with, nor a moment the table exists unpartitioned.
        """
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError
        from pyiceberg.transforms import TruncateTransform

        catalog = self.catalog()
        schema = pq.read_schema(location.path_of(first_part), filesystem=location.arrow_fs())
        _namespace(catalog, self.name.rsplit(".", 1)[0])
        creating = catalog.create_table_transaction(self.name, schema=schema, properties=TABLE_PROPERTIES)
        with creating.update_spec() as spec:
            spec.add_field("run_id", TruncateTransform(8), PARTITION_FIELD)
        # Lost to another creator: its create-table row (already exists) or its metadata (the
        # create requirement failed) came first. Either way the table is loaded, as it is when
        # made here: commit_transaction returns the staged table, which cannot be refreshed.
        with contextlib.suppress(TableAlreadyExistsError, CommitFailedException):
            creating.commit_transaction()
        return catalog.load_table(self.name)


def _namespace(catalog: Catalog, namespace: str) -> None:
    """The namespace, created unless there.

    Two creators at once: a SQL catalog checks, then inserts, so the later insert fails with its
    database's integrity error, not ``NamespaceAlreadyExistsError``; the namespace being there
    afterwards is what counts.
    """
    try:
        catalog.create_namespace_if_not_exists(namespace)
    except Exception:
        if not catalog.namespace_exists(namespace):
            raise


def snapshot_of(table: Any, run_id: str) -> int | None:
    """The id of the snapshot of ``table`` whose summary names ``run_id``."""
    for snapshot in table.metadata.snapshots:
        if snapshot.summary is not None and snapshot.summary[RUN_ID_PROPERTY] == run_id:
            return int(snapshot.snapshot_id)
    return None
