"""What the graph reads: a datasource over what a run has left, whatever kind its inputs are.

:func:`source_of` is the one place the input's kind decides how it is read: files and manifest
entries as ids and URIs (:mod:`~pipeline.inputs.uri_source`), their bytes fetched later by the
decode tasks; shards by one read task each (:mod:`~pipeline.inputs.shard_source`), the records'
bytes in the blocks. What is left comes from the output's restore (:class:`Remaining`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pipeline.inputs.fingerprints import listed, of_inputs
from pipeline.inputs.manifest import rows_to_do
from pipeline.inputs.shards import ReadSpec

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data.datasource import Datasource

    from pipeline.config import Config
    from pipeline.inputs.listing import Listing
    from pipeline.inputs.shards import Shard, ShardLedger


@dataclass(frozen=True)
class Remaining:
    """What a run has left to read, as its output's restore found it (:mod:`pipeline.outputs.run_output`)."""

    done: int  # rows the parts already hold, written by earlier attempts
    uris: list[str]  # the inputs still to read: files, or shards (empty: only the commit is left)
    shards: list[Shard] | None = None  # a run over shards: each still to read, with the ids it wrote


@dataclass(frozen=True)
class Source:
    """The read of what is left: its datasource, the rows it yields, and what they carry."""

    datasource: Datasource
    rows: int  # rows it yields; for shards what their footers say (0: unknown until read)
    exact: bool  # whether ``rows`` is exact: a shard's records are known only once read
    blocks: int | None = None  # Ray Data's override_num_blocks: one block stream per shard
    carried: pa.Table | None = None  # the carried columns, row for row with the URIs (a manifest's)
    carried_schema: pa.Schema | None = None  # a run over shards: the columns each record carries
    unreadable_names: frozenset[str] = frozenset()  # listed names not valid UTF-8: invalid_uri rows


def source_of(config: Config, listing: Listing, remaining: Remaining, ledger: ShardLedger) -> Source:
    """The read of ``remaining`` (which must hold inputs to read); ``ledger`` records each shard read."""
    # Imported here: both are Ray Data datasources, and ``pipeline run``'s checks come before Ray.
    from pipeline.inputs.shard_source import ShardDatasource, survey
    from pipeline.inputs.uri_source import UriListDatasource

    if remaining.shards is None:
        todo = remaining.uris
        carried = rows_to_do(listing.carried, listing.uris, todo) if listing.carried is not None else None
        return Source(
            UriListDatasource(todo, carry=carried is not None, fingerprints=of_inputs(listing, todo)),
            rows=len(todo),
            exact=True,
            carried=carried,
            unreadable_names=listing.unreadable_names,
        )
    # The driver never holds the records: it holds the shard list and reads Parquet footers (the
    # carried columns' types, the record count progress is shown against).
    carried_types, records = survey(config, listing.format, remaining.uris)
    spec = replace(ReadSpec.of(config.input, listing.format, config.storage, ledger), carried=carried_types)
    skipped = sum(len(shard.skip) for shard in remaining.shards)
    prints = listed(listing, 0, len(listing.uris))  # each shard's, stored in its records' rows
    shards = ShardDatasource([replace(s, fingerprint=prints[s.index]) for s in remaining.shards], spec)
    return Source(
        shards,
        rows=max(0, records - skipped),
        exact=False,
        blocks=len(remaining.shards),
        carried_schema=shards.carried_schema(),
        unreadable_names=listing.unreadable_names,
    )
