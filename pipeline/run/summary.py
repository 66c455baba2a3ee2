"""What a run did: the summary printed at the end, logged, and written as JSON files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.storage.atomic_writes import write_atomic


@dataclass
class RunSummary:
    """What a run did; printed at the end and written as JSON."""

    run_id: str
    status: str
    output_uri: str
    task: str = "classify"  # model.task: what an ok row holds
    inputs: int = 0  # input files, or records of the shards (input_format: parquet, webdataset)
    input_format: str = "files"
    failed_shards: list[dict[str, str]] = field(default_factory=list)  # uri, reason, error
    empty_manifest_cells: int = 0  # blank cells of the manifest's URI column, skipped
    succeeded: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    processed_this_run: int = 0
    decoded: int = 0  # inputs this attempt's decode stage read: one per input, whatever the models
    # After a stop: rows this attempt's actors finished that no part holds (the next run redoes them).
    unwritten_rows: int = 0
    resumed: bool = False
    storage_retries: int = 0  # S3 requests sent again (throttling, 5xx, timeouts, resets): driver and tasks
    seconds: float = 0.0
    images_per_second: float = 0.0
    steady_images_per_second: float = 0.0
    # Where the wall time went, in seconds from the start of run_job: Ray connected (or the
    # embedded cluster started), first classified batch, last part written, commit done.
    timings: dict[str, float] = field(default_factory=dict)
    # The named phase the run was in when it ended (metrics.JOB_PHASES), and seconds in each.
    phase: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    # An incremental run (output.previous): the previous output and the rows carried, computed,
    # retried and dropped (pipeline.outputs.carry.Carried), or why it ran in full. None: a full run.
    incremental: dict[str, Any] | None = None

    @classmethod
    def of_commit(
        cls, manifest: dict[str, Any], output_uri: str, status: str = "already_committed"
    ) -> RunSummary:
        """A rerun's summary when the output holds this configuration's commit: its counts, nothing computed.

        ``status``: ``table_committed`` when the rerun made the commit's table commit (``output.format``).
        """
        counts = manifest.get("counts", {})
        return cls(
            run_id=str(manifest.get("run_id")),
            status=status,
            output_uri=output_uri,
            task=str(manifest.get("model", {}).get("task") or "classify"),
            inputs=int(counts.get("inputs", 0)),
            succeeded=int(counts.get("succeeded", 0)),
            failed=int(counts.get("failed", 0)),
            failed_by_reason=dict(manifest.get("failed_by_reason", {})),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    def write(self, path: str) -> None:
        """The summary's JSON as a local file (``metrics.summary_path``), replaced whole."""
        import fsspec

        data = (json.dumps(self.as_dict(), indent=2) + "\n").encode()
        write_atomic(fsspec.filesystem("file"), path, data)  # a reader never sees half a summary

    def render(self) -> str:
        """Human-readable lines for the console."""
        status = self.status
        if status == "already_committed":
            status += " with this configuration: nothing to do, nothing written (--overwrite redoes it)"
        elif status == "table_committed":
            status += ": the run committed here added to output.table, nothing computed"
        lines = [
            f"run {self.run_id}: {status}",
            f"  output     {self.output_uri}",
            f"  task       {self.task}",
            f"  inputs     {self.inputs}"
            + (
                f" ({self.empty_manifest_cells} empty manifest cells skipped)"
                if self.empty_manifest_cells
                else ""
            ),
            f"  succeeded  {self.succeeded}",
            f"  failed     {self.failed}",
        ]
        width = max(map(len, self.failed_by_reason), default=0)
        lines += [f"    {reason:<{width}}  {count}" for reason, count in self.failed_by_reason.items()]
        if self.failed_shards:
            lines.append(f"  shards     {len(self.failed_shards)} could not be read:")
            lines += [f"    {item['uri']}: {item['reason']}: {item['error']}" for item in self.failed_shards]
        lines += [
            f"  processed  {self.processed_this_run} this run{' (resumed)' if self.resumed else ''}"
            + (f", {self.unwritten_rows} finished but not written (redone)" if self.unwritten_rows else ""),
            f"  seconds    {self.seconds:.1f}",
            f"  images/s   {self.images_per_second:.1f}",
        ]
        if self.incremental is not None:
            from pipeline.outputs.carry import describe  # pyarrow: only when there is a line to say

            lines.append(f"  previous   {describe(self.incremental)}")
        if self.storage_retries:
            lines.append(f"  storage    {self.storage_retries} S3 requests retried")
        if self.timings:
            lines.append("  timeline   " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        if self.phases:
            lines.append("  phases     " + ", ".join(f"{k} {v:.1f}s" for k, v in self.phases.items()))
        if self.status != "succeeded" and self.phase:
            lines.append(f"  ended in   {self.phase}")
        if self.error:
            lines.append(f"  error      {self.error}")
        return "\n".join(lines)
