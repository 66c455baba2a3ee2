"""The format switch and the run's table commit: ``output.format`` picks the target, one commit per run.

The table commit is its own step: a folder already committed (``_SUCCESS``) whose manifest names
no table gets it from the parts that manifest lists, verified when they were committed, without
computing a row (:func:`table_pending`, :func:`commit_committed`): a night committed as Parquet,
rerun with ``output.format: iceberg``, lands in the table. A run's parts go to one table: a
folder committed to another is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError, OutputExistsError, UnreadableFileError
from pipeline.outputs.layout import MANIFEST
from pipeline.outputs.run_state import read_manifest
from pipeline.outputs.tables.target import CONFIG_HASH_PROPERTY, OUTPUT_PROPERTY, RUN_ID_PROPERTY, TableTarget

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.outputs.layout import OutputLocation


def target_of(config: Config) -> TableTarget | None:
    """The table ``output.format`` names (None: the Parquet folder alone)."""
    if config.output.format == "iceberg":
        from pipeline.outputs.tables.iceberg import IcebergTarget

        return IcebergTarget(config)
    if config.output.format == "lance":
        from pipeline.outputs.tables.lance import LanceTarget

        return LanceTarget(config)
    return None


def commit_run(
    target: TableTarget, location: OutputLocation, files: list[str], run_id: str, config_hash: str
) -> dict[str, Any]:
    """The table commit of ``files`` (or the one in the table's history); what ``_SUCCESS`` says of it."""
    found = target.committed(run_id)
    if found is None:
        properties = {
            RUN_ID_PROPERTY: run_id,
            CONFIG_HASH_PROPERTY: config_hash,
            OUTPUT_PROPERTY: location.uri,
        }
        found = target.commit(location, files, properties)
    else:
        target.finish()
    return {"format": target.format, "name": target.name, "commit": found}


def table_pending(config: Config, manifest: dict[str, Any]) -> bool:
    """Whether a committed run still lacks the table commit ``output.format`` asks for.

    Raises :class:`OutputExistsError` (exit 3) when its manifest names another table: a run's
    parts go to one table (an Iceberg table references them; ``--overwrite`` checks that one).
    """
    if config.output.format == "parquet":
        return False
    made = manifest.get("table")
    if made is None:
        return True
    if (made.get("format"), made.get("name")) == (config.output.format, str(config.output.table)):
        return False
    raise OutputExistsError(
        f"output {config.output.uri} holds run {manifest.get('run_id')!r}, committed to {made.get('format')} "
        f"table {made.get('name')}; output.format={config.output.format} output.table={config.output.table} "
        "names another, and a run's parts go to one table. Nothing was written: set output.format and "
        "output.table back, or write the run to another output.uri"
    )


def commit_committed(config: Config, location: OutputLocation, manifest: dict[str, Any]) -> dict[str, Any]:
    """A committed run's table commit, from the parts its ``_SUCCESS`` lists; the manifest naming it.

    A crash after the table commit, before the manifest is rewritten, is found in the table's
    history by the rerun, which then only rewrites the manifest.
    """
    target = target_of(config)
    assert target is not None  # noqa: S101  # only called when table_pending said so
    files = [str(item["path"]) for item in manifest["layout"]["files"]]
    made = commit_run(target, location, files, str(manifest["run_id"]), str(manifest["config_hash"]))
    return {**manifest, "table": made}


def check_clearable(location: OutputLocation, config: Config) -> None:
    """Refuse to delete parts an Iceberg table references (Lance keeps copies: its folder may go)."""
    if not location.exists(MANIFEST):
        return
    try:
        table = read_manifest(location).get("table") or {}
    except UnreadableFileError:  # a broken _SUCCESS (recovered by --overwrite) names no table
        return
    if table.get("format") == "iceberg":
        raise ConfigError(
            "output.uri",
            config.output.uri,
            f"its parts are the data files of Iceberg table {table.get('name')} (snapshot "
            f"{table.get('commit')}): --overwrite would break the table; write the new run to another "
            "output.uri",
        )
