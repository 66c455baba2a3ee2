"""The run's last step: the failure budget, then the dead-letter table and ``_SUCCESS``.

A shard that could not be read to its end (``failed_shards``) counts against
``output.max_failure_fraction`` as one failed input, beside the rows it did yield: its
records are unknown, and a bad shard must not pass unnoticed where a bad file would not.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pipeline import output, verify
from pipeline.errors import FailureBudgetExceededError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config
    from pipeline.model import ModelSpec
    from pipeline.planning import ResourcePlan
    from pipeline.summary import RunSummary


def commit_run(
    config: Config,
    summary: RunSummary,
    location: output.OutputLocation,
    spec: ModelSpec,
    result: verify.Tally,
    plan: ResourcePlan,
    config_hash: str,
    started_wall: float,
    progress: dict[str, Any] | None = None,
    still_held: Callable[[], None] | None = None,
) -> None:
    """Enforce the failure budget, then write the dead-letter table and the manifest.

    ``progress``: the attempt's rows done over time (none when earlier attempts wrote every part).
    ``still_held``: raises if the job lost its hold on the output (``Lease.check_renewed``).
    """
    shards = len(result.failed_shards)
    failed, inputs = summary.failed + shards, summary.inputs + shards
    fraction = failed / inputs if inputs else 0.0
    if fraction > config.output.max_failure_fraction:
        needed = math.ceil(fraction * 1000) / 1000
        unread = f" (with {shards} shards that could not be read)" if shards else ""
        raise FailureBudgetExceededError(
            f"{failed} of {inputs} rows failed{unread} ({fraction:.1%}), above "
            f"output.max_failure_fraction={config.output.max_failure_fraction}; rows are written "
            f"under {location.uri_of(output.DATA_DIR)} (failed rows with their reason) but the run "
            f"is NOT committed. To accept these failures, run the same command again with --set "
            f"output.max_failure_fraction={needed:g}: it resumes run {summary.run_id} and commits "
            "without redoing a row. To retry the failed inputs, fix them and run again with --overwrite."
        )
    document = verify.manifest_document(
        config,
        summary.as_dict(),
        spec,
        plan.as_dict(),
        config_hash,
        started_wall,
        result.rows,
        result.carried,
    )
    if progress is not None:
        document["progress"] = progress
    if summary.input_format != "files":
        document["input_format"] = summary.input_format
        document["failed_shards"] = result.failed_shards
    verify.commit(location, result, document, still_held)
