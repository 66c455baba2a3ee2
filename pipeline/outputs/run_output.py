"""One run's output, from the claim to the commit: the one object that owns its life.

A job opens its output (:meth:`RunOutput.open`), refuses it if it is unsafe or already committed
(:meth:`~RunOutput.committed_here`: this configuration's commit there ends the run, nothing
written), takes its lease (:meth:`~RunOutput.take`), and under it: claims it
(:meth:`~RunOutput.claim`: a new run, or the unfinished one it resumes), fixes a new run's inputs
(:meth:`~RunOutput.start`), restores what an interrupted attempt left (:meth:`~RunOutput.restore`:
what is left to write), reads the parts back (:meth:`~RunOutput.tally`) and commits
(:meth:`~RunOutput.commit`). Whether the run's inputs are files or shards decides how the parts
are restored and tallied (:class:`FileParts`, :class:`ShardParts`); the output picks, the job
never asks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipeline.errors import JobFailedError
from pipeline.inputs import fingerprints, row_ids
from pipeline.inputs.manifest import check_resumed_types
from pipeline.inputs.sources import Remaining
from pipeline.outputs import carry, restore, run_state, safety, shard_carry, shard_parts, tally
from pipeline.outputs.claim import claim
from pipeline.outputs.commit import RunRecord, check_failure_budget, commit, manifest_document, write_manifest
from pipeline.outputs.layout import DATA_DIR, INPUTS, RUN_STATE, OutputLocation
from pipeline.outputs.lease import Lease
from pipeline.outputs.shard_ledger import LedgerWriter
from pipeline.outputs.tables import table_commit

if TYPE_CHECKING:
    from collections.abc import Callable

    import pyarrow as pa

    from pipeline.config import Config
    from pipeline.inputs.listing import Listing
    from pipeline.outputs.previous import PreviousOutput
    from pipeline.outputs.tally import Tally


class FileParts:
    """The parts of a run over files or manifest entries: one row per listed input."""

    def restore(self, location: OutputLocation, listing: Listing, run_id: str) -> Remaining:
        """The inputs no part that reads back holds (:func:`pipeline.outputs.restore.restore_checkpoint`)."""
        todo = restore.restore_checkpoint(location, listing.uris, run_id)
        return Remaining(done=len(listing.uris) - len(todo), uris=todo)

    def tally(self, location: OutputLocation, config: Config, listing: Listing) -> Tally:
        """Every listed input in the parts exactly once (:func:`pipeline.outputs.tally.tally`)."""
        ids = {row_ids.row_id(uri) for uri in listing.uris}
        return tally.tally(location, config.storage, ids, carried=config.input.passthrough_columns)


class ShardParts:
    """The parts of a run over shards, checked against the shard ledger, never a listing of records."""

    def restore(self, location: OutputLocation, listing: Listing, run_id: str) -> Remaining:
        """The shards not completely written, each with the ids it wrote (:mod:`~.shard_parts`)."""
        todo, done = shard_parts.restore(location, listing.uris, run_id)
        return Remaining(done=done, uris=[shard.uri for shard in todo], shards=todo or None)

    def tally(self, location: OutputLocation, config: Config, listing: Listing) -> Tally:
        """Every record of every shard in the parts exactly once, as the ledger counted them."""
        result = shard_parts.tally(location, config.storage, listing.uris, config.input.passthrough_columns)
        return replace(result, counted_inputs=result.rows)


def parts_of(listing: Listing) -> FileParts | ShardParts:
    """How a run over these inputs writes its parts: one row per file, or per record of a shard."""
    return FileParts() if listing.format == "files" else ShardParts()


class RunOutput:
    """The output a run writes, and the lease it holds on it: every step of the output's life."""

    def __init__(self, location: OutputLocation, config: Config) -> None:
        self.location = location
        self.config = config
        self.lease: Lease | None = None  # set by take(): held until the job ends

    @classmethod
    def open(cls, config: Config) -> RunOutput:
        """``output.uri`` with its filesystem; nothing is read yet."""
        return cls(OutputLocation.open(config.output.uri, config.storage), config)

    @property
    def uri(self) -> str:
        """The output's URI, normalised."""
        return self.location.uri

    def committed_here(self, weights_sha256: Callable[[], str], *, overwrite: bool) -> dict[str, Any] | None:
        """Refuse an unsafe output; the manifest of this config's commit there, if any (:mod:`~.safety`)."""
        return safety.check_before_lease(self.location, self.config, weights_sha256, overwrite=overwrite)

    def take(self) -> Lease:
        """Lease the output (one writer at a time); a context manager that renews it until the end."""
        self.lease = Lease.acquire(
            self.location, self.config.output.lease_seconds, self.config.resources.stall_timeout_s
        )
        return self.lease

    def held(self) -> Lease:
        """The lease, while the job holds it."""
        assert self.lease is not None  # noqa: S101  # only called between take and release
        return self.lease

    def claim(self, weights_sha256: Callable[[], str], new_id: str, *, overwrite: bool) -> tuple[str, bool]:
        """The run id (the unfinished run's, to resume it, else ``new_id``) and whether this run resumes.

        The lease then names the run. Nothing is deleted here: ``--overwrite`` clears only after
        the inputs and the model have been checked (:meth:`clear`), just before the first write.
        """
        found = claim(self.location, self.config, weights_sha256, overwrite=overwrite)
        run_id = found.resume_id or new_id
        self.held().name_run(run_id)
        return run_id, found.resume_id is not None and self.location.exists(INPUTS)

    def check_inputs_unchanged(self, listing: Listing, run_id: str) -> None:
        """Refuse a resume whose inputs are not those its run started with (``fingerprints``)."""

        def fixed(columns: list[str] | None) -> pa.Table:
            return self.location.read_table(INPUTS, columns)

        fingerprints.check_resumed(listing, self.config.input, run_id, fixed)

    def as_started(self, listing: Listing, run_id: str) -> Listing:
        """A resumed run's inputs as it started: the carried columns' types checked, its input format."""
        started = self.location.read_json(RUN_STATE)
        check_resumed_types(
            started.get("passthrough_columns"), listing.carried, self.config.input.uri, run_id
        )
        return replace(listing, format=started.get("input_format", "files"))

    def clear(self) -> int:
        """``--overwrite``: delete the pipeline's own files, while still holding the output; how many.

        Refused where an Iceberg table references the parts (``_SUCCESS`` names a table commit):
        deleting them would break every snapshot since.
        """
        self.held().check()
        table_commit.check_clearable(self.location, self.config)
        return self.location.clear()

    def start(self, listing: Listing, state: dict[str, Any]) -> None:
        """Fix a new run's inputs, then its state (``_run.json``, last)."""
        run_state.start_run(self.location, fingerprints.inputs_table(listing), state)

    def restore(self, listing: Listing, run_id: str) -> Remaining:
        """Make the output consistent after a crash; what is left to write."""
        return parts_of(listing).restore(self.location, listing, run_id)

    def carry_forward(
        self, previous: PreviousOutput, listing: Listing, remaining: Remaining
    ) -> tuple[Remaining, carry.Carried]:
        """An incremental run: carry the previous output's rows still current; what is left to compute.

        Run after :meth:`restore`, so what an earlier attempt carried is not carried twice. Over
        shards, the unchanged shards' records are carried and the shard restore then finds
        what is left, as for a resumed run (:mod:`~.shard_carry`).
        """
        if listing.format != "files":
            counts = shard_carry.carry_shards(
                self.location, previous, listing, keep_failed=self.config.output.keep_failed
            )
            return self.restore(listing, self.held().holder.run_id or ""), counts
        todo, counts = carry.carry_forward(
            self.location, previous, listing, remaining.uris, keep_failed=self.config.output.keep_failed
        )
        return Remaining(done=remaining.done + len(remaining.uris) - len(todo), uris=todo), counts

    def ledger(self) -> LedgerWriter:
        """Where the read tasks of a run over shards record each shard read to its end."""
        return LedgerWriter(self.location.uri, self.config.storage)

    def tally(self, listing: Listing) -> Tally:
        """Read the parts back: every input exactly once, counted by outcome."""
        return parts_of(listing).tally(self.location, self.config, listing)

    def commit(self, result: Tally, record: RunRecord) -> None:
        """The failure budget, the table commit (``output.format``), the dead-letter table, ``_SUCCESS``.

        Each only while the lease holds. A table commit already in the table's history (a crash
        after it, before ``_SUCCESS``) is not made again: ``_SUCCESS`` names it.
        """
        check_failure_budget(record, result, self.location.uri_of(DATA_DIR))
        document = manifest_document(record, result)
        if (
            target := table_commit.target_of(self.config)
        ) is not None:  # output.format: the table commit first
            self.held().check_renewed()
            files = [str(item["path"]) for item in result.files]
            document["table"] = table_commit.commit_run(
                target, self.location, files, record.summary["run_id"], record.config_hash
            )
        commit(self.location, result, document, self.held().check_renewed)

    def table_pending(self, committed: dict[str, Any]) -> bool:
        """Whether this config's commit here lacks its table commit (:func:`.table_commit.table_pending`)."""
        return table_commit.table_pending(self.config, committed)

    def commit_table(self) -> dict[str, Any]:
        """The committed run's table commit, under the lease, then ``_SUCCESS`` naming it; the manifest.

        Read again under the lease: another job may have made it since :meth:`committed_here`.
        """
        self.held().check()
        committed = run_state.read_run_state(self.location).committed
        if committed is None:  # its _SUCCESS went since committed_here: nothing to add a table to
            raise JobFailedError(f"output {self.uri} is no longer committed; run the same job again")
        if not table_commit.table_pending(self.config, committed):
            return committed
        manifest = table_commit.commit_committed(self.config, self.location, committed)
        self.held().check_renewed()
        write_manifest(self.location, manifest)
        return manifest

    def rows_written(self) -> int:
        """Rows in completely written parts, every attempt's (:func:`~.restore.rows_written`)."""
        return restore.rows_written(self.location)

    def committed_by(self, run_id: str) -> bool:
        """Whether ``_SUCCESS`` is run ``run_id``'s."""
        return run_state.committed_by(self.location, run_id)

    def write_summary(self, run_id: str, summary: dict[str, Any]) -> bool:
        """Write the run's summary beside the output; best effort."""
        return run_state.write_summary(self.location, run_id, summary)
