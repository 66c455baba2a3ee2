"""The driver's part of a run over shards (moved as it was; folded into the output's life next)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from pipeline.inputs.shard_source import survey
from pipeline.inputs.shards import ReadSpec
from pipeline.outputs import shard_parts

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.inputs.shard_source import ShardDatasource
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.tally import Tally


def restore(
    config: Config, location: OutputLocation, uris: list[str], kind: str, run_id: str
) -> tuple[ShardDatasource | None, int, int]:
    """The read of the shards still to do (None: every record is written), rows written, records to do."""
    from pipeline.inputs.shard_source import ShardDatasource

    todo, done = shard_parts.restore(location, uris, run_id)
    if not todo:
        return None, done, 0
    carried, records = survey(config, kind, [shard.uri for shard in todo])
    spec = replace(ReadSpec.of(config.input, kind, config.storage, location.uri), carried=carried)
    skipped = sum(len(shard.skip) for shard in todo)
    return ShardDatasource(todo, spec), done, max(0, records - skipped)


def tally(config: Config, location: OutputLocation, uris: list[str]) -> Tally:
    """Prove every record of every shard is written once (:func:`pipeline.outputs.shard_parts.tally`)."""
    return shard_parts.tally(location, config.storage, uris, config.input.passthrough_columns)
