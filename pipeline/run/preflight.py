"""What a run would do with this config, found by the checks the run makes first, writing nothing.

``pipeline plan`` calls :func:`check_run`, so a plan that passes means the run passes the
same checks, with the same exit codes: the model name, the output (safe, committed, or an
unfinished run it may resume: :mod:`pipeline.outputs.safety`,
:func:`pipeline.outputs.run_state.check_can_start`),
the inputs (listed), the weights (read, checksum, fitted to the architecture), and an
incremental run's previous output (:func:`pipeline.outputs.tables.previous_table.find_any_previous`). Only the
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
from pipeline.outputs.tables import table_commit
from pipeline.outputs.tables.previous_table import find_any_previous
from pipeline.run.multi import MultiRun
from pipeline.run.pools import GIB, Pool

if TYPE_CHECKING:
    from pipeline.compute.model import ModelSpec
    from pipeline.config import Config

CHECKS = (
    "config, model name, output (safe, not another run's), inputs, weights against the architecture, "
    "output.previous"
)


@dataclass(frozen=True)
class Verdict:
    """What the run will do: ``new``, ``resume``, ``overwrite`` (a new run after deleting), ``nothing``.

    Or ``table_commit``: a committed run's table commit alone (``output.format``, nothing computed).
    """

    action: str
    output_uri: str
    run_id: str | None = None  # the run resumed, or the one already committed
    committed_at: str | None = None
    listing: Listing | None = None  # None when there is nothing to do
    spec: ModelSpec | None = None
    previous: str | None = None  # output.previous: the output carried from, or why it runs in full
    models: tuple[tuple[str, ModelSpec], ...] = ()  # models: (output name, spec) of each model
    pools: tuple[Pool, ...] = ()  # models: which share an inference actor (pipeline.run.pools)

    def lines(self, config: Config) -> list[str]:
        """The plan's first lines, for people."""
        if self.action == "nothing":
            done = (
                f"  nothing: {self.output_uri} already holds run {self.run_id!r}, committed "
                f"{self.committed_at} with this configuration (exit 0, nothing written; --overwrite "
                "redoes it)"
            )
            return ["what the run will do", done]
        if self.action == "table_commit":
            made = (
                f"  table_commit: {self.output_uri} holds run {self.run_id!r}, committed {self.committed_at} "
                f"with this configuration; its parts are committed to {config.output.format} table "
                f"{config.output.table}, nothing computed"
            )
            return ["what the run will do", made]
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
        models = (
            [  # models: one line each, its output beside the run's own folder
                f"  model    {name}: {model.name} ({model.task}, sha256 {model.weights_sha256[:12]}), "
                f"output {self.output_uri.rsplit('/', 1)[0]}/{name}, decoded once for all"
                for name, model in self.models
            ]
            or [f"  model    {spec.name}, {weights} (sha256 {spec.weights_sha256[:12]}), {what}"]
        )
        pools = [_pools_line(config, self.pools)] if self.pools else []
        return ["what the run will do", action, *models, *pools, *previous, f"  checks   {CHECKS}: passed"]

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
            **({"models": [_model_dict(name, spec) for name, spec in self.models]} if self.models else {}),
            **({"pools": [pool.as_dict() for pool in self.pools]} if self.pools else {}),
        }


def _pools_line(config: Config, pools: tuple[Pool, ...]) -> str:
    """Which models share an inference actor, each pool's memory estimate, and why."""
    res = config.resources
    why = (
        "resources.model_groups"
        if res.model_groups
        else f"packed into resources.actor_memory_gib={res.actor_memory_gib}"
        if res.actor_memory_gib is not None
        else "resources.actor_memory_gib not set"
    )
    each = "; ".join(f"{'+'.join(pool.outputs)} ~{pool.estimate_bytes / GIB:.2f} GiB" for pool in pools)
    if len(pools) == 1:
        return f"  pools    one actor holds every model: {each} ({why})"
    return f"  pools    {len(pools)} actor pools, chained over one decode: {each} ({why})"


def _model_dict(output: str, spec: ModelSpec) -> dict[str, Any]:
    """One model of a ``models:`` run in ``pipeline plan --json``."""
    return {"output": output, "name": spec.name, "task": spec.task, "sha256": spec.weights_sha256}


def check_run(config: Config) -> Verdict:
    """Run's checks in run's order, raising its errors; what the run will do if they pass."""
    many = MultiRun.of(config)  # models: each model checked; the run itself is output.uri/_multi
    if many is None:
        check_model(config.model)
    else:
        config = many.root
    overwrite = config.output.mode == "overwrite"
    location = layout.OutputLocation.open(config.output.uri, config.storage)
    weights = functools.cache(
        many.weights if many else functools.partial(read_weights, config.model, config.storage)
    )
    done = safety.check_before_lease(location, config, lambda: weights().sha256, overwrite=overwrite)
    if done is not None:  # nothing to do, or only its table commit (output.format: refused if another's)
        committed_at = done.get("committed_at") or done.get("finished_at")
        action = "table_commit" if table_commit.table_pending(config, done) else "nothing"
        return Verdict(action, location.uri, str(done.get("run_id")), str(committed_at))
    if many is not None:
        many.check_outputs(overwrite=overwrite)
    found = claim.claim(location, config, lambda: weights().sha256, overwrite=overwrite, write=False)
    state, resume = found.state, found.resume_id
    listing = list_inputs(config.input, config.storage)
    if many is not None:
        spec, _ = many.resolve()
    else:
        spec, _ = resolve_spec(config.model, config.preprocess, config.storage, weights())
    held = state.committed is not None or state.started is not None or state.has_data
    action = "resume" if resume else ("overwrite" if overwrite and held else "new")
    models = tuple((run.output, run.spec) for run in many.runs) if many else ()
    if many is not None:  # models: refuses output.previous (config checks)
        return Verdict(
            action, location.uri, resume, listing=listing, spec=spec, models=models, pools=many.pools
        )
    previous, why = find_any_previous(config, config.config_hash(spec.weights_sha256))  # refused as run does
    carried = f"{previous.uri}: rows of unchanged inputs carried" if previous is not None else why
    if previous is not None and listing.format != "files":  # a shard's records: counted once read
        carried = f"{previous.uri}: records of unchanged shards carried"
    return Verdict(action, location.uri, resume, listing=listing, spec=spec, previous=carried)
