"""A committed output as DuckDB reads it: the manifest checked, the parts as a view, bounded memory."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.errors import OutputNotCommittedError, OutputNotFoundError, StorageError, UnreadableFileError
from pipeline.outputs.layout import DATA_DIR, MANIFEST, OutputLocation
from pipeline.outputs.run_state import read_manifest
from pipeline.review import table_source

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from pipeline.config import StorageConfig


MEMORY_LIMIT = "1GB"  # DuckDB's own; the process adds pyarrow's scan buffers and Python


SHOWN = 10  # rows in each list: top labels, lowest confidence, transitions, examples


@dataclass(frozen=True)
class Committed:
    """A committed output: its location, its manifest and the URIs of exactly the parts it lists."""

    location: OutputLocation
    manifest: dict[str, Any]
    parts: list[str]
    rows: pa.Table | None = None  # a table output's run, read through its library (table_source)
    name: str | None = None  # a table output's name, with its run

    @property
    def uri(self) -> str:
        """The output's URI (a table output: its name and run)."""
        return self.name or self.location.uri


def open_committed(uri: str, storage_config: StorageConfig) -> Committed:
    """Open an output for reading; refuse one without a readable ``_SUCCESS``.

    A table output (:func:`~.table_source.is_table`) is one run of the table, its rows in memory.
    """
    if table_source.is_table(uri):
        run = table_source.open_table_run(uri, storage_config)
        return Committed(run.location, run.manifest, [], run.rows, run.name)
    location = OutputLocation.open(uri, storage_config)
    if not location.exists(MANIFEST):
        parts = location.list_files(DATA_DIR)
        if not parts:
            raise OutputNotFoundError(
                f"no output at {location.uri}: neither {MANIFEST} nor {DATA_DIR}/ is there (a mistyped path?)"
            )
        raise OutputNotCommittedError(
            f"{location.uri} is not committed: {len(parts)} file(s) under {DATA_DIR}/ but no {MANIFEST} "
            "(a run in progress, failed or interrupted); its rows are not results"
        )
    try:
        manifest = read_manifest(location)  # valid JSON with the manifest's fields
    except UnreadableFileError as exc:
        raise OutputNotCommittedError(f"{location.uri} is not committed: {exc}") from exc
    files = [str(item["path"]) for item in manifest.get("layout", {}).get("files", [])]
    files = files or [name for name in location.list_files(DATA_DIR) if name.endswith(".parquet")]
    return Committed(location, manifest, [location.uri_of(name) for name in files])


@contextmanager
def connect(**views: Committed) -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB with each output's parts as a view; memory bounded, spilling to a temporary folder.

    DuckDB reads local parts itself; remote ones through the output's fsspec filesystem
    (the job's ``storage.*`` settings), registered with DuckDB, so no DuckDB extension is needed.
    """
    import duckdb

    with tempfile.TemporaryDirectory(prefix="pipeline-duckdb-") as spill:
        connection = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": spill})
        registered: set[str] = set()
        try:
            for name, output in views.items():
                scheme = storage.scheme_of(output.uri)
                if (
                    storage.is_remote(output.uri) and scheme not in registered
                ):  # one per scheme: same settings
                    connection.register_filesystem(output.location.fs)
                    registered.add(scheme)
                if output.rows is not None:
                    connection.from_arrow(output.rows).create_view(name)
                else:
                    connection.read_parquet(output.parts).create_view(name)
            yield connection
        except duckdb.InvalidInputException as exc:  # (a ProgrammingError) a part, not our query
            uris = " and ".join(output.uri for output in views.values())
            raise StorageError(
                f"cannot read the parts of {uris}: a part does not read as Parquet (cut short or "
                f"changed after the commit): {storage.describe(exc)}"
            ) from exc
        except duckdb.ProgrammingError:  # a query of ours, not the storage
            raise
        except (duckdb.Error, OSError) as exc:
            first = next(iter(views.values()))
            uris = " and ".join(output.uri for output in views.values())
            raise storage.storage_error(
                "read the parts of", uris, exc, first.location.storage_config
            ) from exc
        finally:
            connection.close()


def dicts(connection: duckdb.DuckDBPyConnection, sql: str, *params: Any) -> list[dict[str, Any]]:
    """The rows ``sql`` returns, each as a dict by column name."""
    cursor = connection.execute(sql, list(params))
    names = [column[0] for column in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def one(connection: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    """The one row ``sql`` returns."""
    return dicts(connection, sql)[0]
