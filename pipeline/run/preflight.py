"""What a run would do with this config, found by the checks the run makes first, writing nothing.

``pipeline plan`` calls :func:`check_run`, so a plan that passes means the run passes the
same checks, with the same exit codes: the model name, the output (safe, committed, or an
unfinished run it may resume: :mod:`pipeline.outputs.safety`,
:func:`pipeline.outputs.run_state.check_can_start`),
the inputs (listed), the weights (read, checksum, fitted to the architecture), and an
incremental run's previous output (:func:`pipeline.outputs.previous.find_previous`). Only the
lease is not taken: whether another job holds the output is a fact of the moment the run
starts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.compute.sources import check_model, read_weights, resolve_spec
from pipeline.inputs.listing import Listing, list_inputs
from pipeline.outputs import claim, layout, safety
from pipeline.outputs.previous import find_previous

if TYPE_CHECKING:
    from pipeline.compute.model import ModelSpec
    from pipeline.config import Config

CHECKS = (
    "config, model name, output (safe, not another run's), inputs, weights against the architecture, "
    "output.previous"
)


@dataclass(frozen=True)
class Verdict:
    """What the run will do: ``new``, ``resume``, ``overwrite`` (a new run after deleting), or ``nothing``."""

    action: str
    output_uri: str
    run_id: str | None = None  # the run resumed, or the one already committed
    committed_at: str | None = None
    listing: Listing | None = None  # None when there is nothing to do
    spec: ModelSpec | None = None
    previous: str | None = None  # output.previous: the output carried from, or why it runs in full

    def lines(self, config: Config) -> list[str]:
        """The plan's first lines, for people."""
        if self.action == "nothing":
            done = (
                f"  nothing: {self.output_uri} already holds run {self.run_id!r}, committed "
                f"{self.committed_at} with this configuration (exit 0, nothing written; --overwrite "
                "redoes it)"
            )
            return ["what the run will do", done]
        assert self.listing is not None  # noqa: S101  # every other action listed the inputs
        assert self.spec is not None  # noqa: S101  # and resolved the model
        doing = {
            "new": "a new run",
            "resume": f"resume unfinished run {self.run_id!r} (its inputs as fixed when it started)",
            "overwrite": "delete the pipeline's files there, then a new run (output.mode: overwrite)",
        }[self.action]
        kind = "records in shards" if self.listing.format != "files" else "inputs"
        spec = self.spec
        weights = "random weights" if spec.random_init else f"weights {spec.weights_uri}"
        what = f"top-{config.model.top_k} of {spec.num_classes} classes" if spec.task == "classify" else ""
        if spec.embedding is not None:
            what = f"{spec.embedding.dim}-dim {spec.embedding.dtype} vectors"
        action = (
            f"  {doing}: {spec.task} {len(self.listing):,} {kind} ({self.listing.format}) from "
            f"{config.input.uri} into {self.output_uri}"
        )
        previous = [f"  previous {self.previous}"] if self.previous is not None else []
        return [
            "what the run will do",
            action,
            f"  model    {spec.name}, {weights} (sha256 {spec.weights_sha256[:12]}), {what}",
            *previous,
            f"  checks   {CHECKS}: passed",
        ]

    def as_dict(self) -> dict[str, Any]:
        """The ``will_do`` of ``pipeline plan --json``."""
        return {
            "action": self.action,
            "output_uri": self.output_uri,
            "run_id": self.run_id,
            "committed_at": self.committed_at,
            "inputs": None if self.listing is None else len(self.listing),
            "input_format": None if self.listing is None else self.listing.format,
            "previous": self.previous,
            "model": None
            if self.spec is None
            else {"name": self.spec.name, "task": self.spec.task, "sha256": self.spec.weights_sha256},
        }


def check_run(config: Config) -> Verdict:
    """Run's checks in run's order, raising its errors; what the run will do if they pass."""
    check_model(config.model)
    overwrite = config.output.mode == "overwrite"
    location = layout.OutputLocation.open(config.output.uri, config.storage)
    weights = functools.cache(lambda: read_weights(config.model, config.storage))  # once, as run reads them
    done = safety.check_before_lease(location, config, lambda: weights().sha256, overwrite=overwrite)
    if done is not None:
        committed_at = done.get("committed_at") or done.get("finished_at")
        return Verdict("nothing", location.uri, str(done.get("run_id")), str(committed_at))
    found = claim.claim(location, config, lambda: weights().sha256, overwrite=overwrite, write=False)
    state, resume = found.state, found.resume_id
    listing = list_inputs(config.input, config.storage)
    spec, _ = resolve_spec(config.model, config.preprocess, config.storage, weights())
    held = state.committed is not None or state.started is not None or state.has_data
    action = "resume" if resume else ("overwrite" if overwrite and held else "new")
    previous, why = find_previous(config, config.config_hash(spec.weights_sha256))  # refused as run does
    carried = f"{previous.uri}: rows of unchanged inputs carried" if previous is not None else why
    if previous is not None and listing.format != "files":  # a shard's records: counted once read
        carried = f"{previous.uri}: records of unchanged shards carried"
    return Verdict(action, location.uri, resume, listing=listing, spec=spec, previous=carried)
