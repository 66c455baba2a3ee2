"""What a table target is: the properties a commit carries, the protocol, the S3 settings both share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pipeline.config import StorageConfig
    from pipeline.outputs.layout import OutputLocation

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


def s3_endpoint(storage_config: StorageConfig) -> dict[str, str]:
    """The endpoint and region of ``storage``, as both libraries' S3 settings start from."""
    settings: dict[str, str] = {}
    if storage_config.endpoint_url:
        settings["endpoint"] = storage_config.endpoint_url
    if storage_config.region:
        settings["region"] = storage_config.region
    return settings
