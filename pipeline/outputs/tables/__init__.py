"""Outputs as tables: the verified parts committed to an Iceberg table or a Lance dataset, once per run.

The run writes and tallies its Parquet parts as every run does; then :func:`commit_run` makes
ONE table commit (an Iceberg snapshot, a Lance version) whose properties carry the run id and
the config hash. The table's own history is the record of what was committed: a run id found
there is never committed again (:class:`~pipeline.errors.TableCommitRefusedError`), so a rerun
after a crash between the table commit and ``_SUCCESS`` only writes ``_SUCCESS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pipeline.config import Config, StorageConfig
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.tally import Tally

RUN_ID_PROPERTY = "pipeline.run-id"
CONFIG_HASH_PROPERTY = "pipeline.config-hash"
OUTPUT_PROPERTY = "pipeline.output-uri"  # the run's folder: its _SUCCESS, read by inspect and report


class TableTarget(Protocol):
    """A table a run's parts are committed to: its history read, one commit made."""

    format: str
    name: str

    def committed(self, run_id: str) -> int | None:
        """The snapshot id or version that committed ``run_id``, if the table holds one."""

    def commit(self, location: OutputLocation, files: list[str], properties: dict[str, str]) -> int:
        """One commit of the parts ``files`` (paths under the output), refused if the run is there."""

    def finish(self) -> None:
        """What follows a commit found already made (a rerun): Lance's index, if it was not built."""


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


def s3_endpoint(storage_config: StorageConfig) -> dict[str, str]:
    """The endpoint and region of ``storage``, as both libraries' S3 settings start from."""
    settings: dict[str, str] = {}
    if storage_config.endpoint_url:
        settings["endpoint"] = storage_config.endpoint_url
    if storage_config.region:
        settings["region"] = storage_config.region
    return settings
