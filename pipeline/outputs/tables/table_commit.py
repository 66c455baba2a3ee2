"""The format switch and the run's table commit: ``output.format`` picks the target, one commit per run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError, UnreadableFileError
from pipeline.outputs.layout import MANIFEST
from pipeline.outputs.run_state import read_manifest
from pipeline.outputs.tables.target import CONFIG_HASH_PROPERTY, OUTPUT_PROPERTY, RUN_ID_PROPERTY, TableTarget

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.tally import Tally


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
    target: TableTarget, location: OutputLocation, result: Tally, run_id: str, config_hash: str
) -> dict[str, Any]:
    """The run's table commit (or the one already in the table's history); what ``_SUCCESS`` says of it."""
    found = target.committed(run_id)
    if found is None:
        files = [str(item["path"]) for item in result.files]
        properties = {
            RUN_ID_PROPERTY: run_id,
            CONFIG_HASH_PROPERTY: config_hash,
            OUTPUT_PROPERTY: location.uri,
        }
        found = target.commit(location, files, properties)
    else:
        target.finish()
    return {"format": target.format, "name": target.name, "commit": found}


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
