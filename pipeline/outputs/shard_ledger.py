"""The shard ledger: ``_shards/<index>.json`` under the output, one per shard read to its end.

Each shard's read task writes its entry when it has read the shard to the end (or to where it
failed): how many records it holds, and why it could not be read further. The commit compares
the ledger with the parts (:mod:`pipeline.outputs.shard_parts`); a resume skips the shards whose
records are all written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.inputs.shards import LedgerEntry, ShardFailure
from pipeline.outputs.layout import OutputLocation

if TYPE_CHECKING:
    from pipeline.config import StorageConfig


LEDGER_DIR = "_shards"


def ledger_name(index: int) -> str:
    """The ledger entry of the ``index``-th shard, relative to the output."""
    return f"{LEDGER_DIR}/{index:06d}.json"


@dataclass(frozen=True)
class LedgerWriter:
    """Writes a shard's entry under the output, from its read task (``ReadSpec.ledger``)."""

    output_uri: str
    storage: StorageConfig

    def __call__(self, index: int, uri: str, entry: LedgerEntry) -> None:
        """Record the ``index``-th shard as its read task found it."""
        write_entry(OutputLocation.open(self.output_uri, self.storage), index, uri, entry)


def write_entry(location: OutputLocation, index: int, uri: str, entry: LedgerEntry) -> None:
    """Record a shard read to its end (or to where it failed); written at once, like a checkpoint."""
    failure = entry.failure
    location.write_json(
        ledger_name(index),
        {
            "index": index,
            "uri": uri,
            "records": entry.records,
            "reason": failure.reason if failure else None,
            "error": failure.detail if failure else None,
        },
    )


def read_ledger(location: OutputLocation) -> dict[int, LedgerEntry]:
    """Every shard read to its end so far, by index."""
    entries: dict[int, LedgerEntry] = {}
    for name in location.list_files(LEDGER_DIR):
        if not name.endswith(".json"):
            continue
        data = location.read_json(name)
        reason = data.get("reason")
        failure = (
            ShardFailure(str(data["uri"]), str(reason), str(data.get("error") or "")) if reason else None
        )
        entries[int(data["index"])] = LedgerEntry(int(data["records"]), failure)
    return entries
