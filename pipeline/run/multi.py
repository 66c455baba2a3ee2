"""A run of several models (``models:``): one decode, one actor, then one committed output per model.

Layout under ``output.uri``::

    _multi/          the run's own output: its lease, _run.json, _inputs.parquet, checkpoint and
                     combined parts (every model's columns, pipeline.schema.model_table), _SUCCESS
    <output>/        one per model, as its single-model run writes it: _run.json,
                     _inputs.parquet, data/part-*.parquet, _failures.parquet, _SUCCESS

The combined run is an ordinary run (lease, resume, checkpoint, read-back). Its commit is the
last step of :func:`MultiRun.commit_models`: every model's parts are split from the combined
ones (idempotent: a part already there with its rows is kept), every model's output is read
back and its failure budget checked, and only then each model's ``_SUCCESS`` is written, then
``_multi/_SUCCESS``. A crash between the first and the last leaves ``_multi`` uncommitted, so
the same command resumes the run: nothing is left to compute, the missing ``_SUCCESS`` files
are written (docs/storage.md, "Several models in one run").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.compute.model import Weights
from pipeline.compute.multi_actor import ModelRun
from pipeline.compute.shared_decode import plan_shared_decode
from pipeline.compute.sources import check_model, read_weights, resolve_spec
from pipeline.config.multi import is_multi, model_configs, output_uri
from pipeline.errors import OutputExistsError, ResumeRefusedError
from pipeline.inputs import fingerprints
from pipeline.outputs import run_state
from pipeline.outputs.commit import check_failure_budget
from pipeline.outputs.layout import DATA_DIR, MANIFEST, RUN_STATE, is_temporary
from pipeline.outputs.run_output import RunOutput
from pipeline.run.pools import Pool, plan_pools
from pipeline.schema import model_table

if TYPE_CHECKING:
    from pipeline.compute.model import ModelSpec
    from pipeline.config import Config
    from pipeline.inputs.listing import Listing
    from pipeline.outputs.commit import RunRecord
    from pipeline.outputs.tally import Tally

#: The run's own output under output.uri: _-prefixed, so readers of the folder skip it.
COMBINED = "_multi"


def combined_digest(digests: list[tuple[str, str]]) -> str:
    """One sha256 for every model's weights: (output name, its weights' sha256) in order."""
    return hashlib.sha256("\n".join(f"{name}={digest}" for name, digest in digests).encode()).hexdigest()


@dataclass
class MultiRun:
    """The models of one ``models:`` run: their configs, outputs and leases, resolved once."""

    config: Config  # the models: config as given
    models: list[tuple[str, Config]]  # (output name, the model's single-model config)
    outputs: list[RunOutput]
    root: Config  # the combined run's config: output.uri/_multi
    runs: tuple[ModelRun, ...] = ()
    pools: tuple[Pool, ...] = ()  # which models share an actor (pipeline.run.pools), set by resolve
    _weights: list[Weights] | None = None

    @classmethod
    def of(cls, config: Config) -> MultiRun | None:
        """The run's models, each checked (source, library); None for a single-model config."""
        if not is_multi(config):
            return None
        models = model_configs(config)
        for _, single in models:
            check_model(single.model)
        root_output = config.output.model_copy(update={"uri": output_uri(config.output.uri, COMBINED)})
        root = config.model_copy(update={"output": root_output})
        return cls(config, models, [RunOutput.open(single) for _, single in models], root)

    def weights(self) -> Weights:
        """Every model's weights, read once; the one digest the combined run is hashed with."""
        if self._weights is None:
            self._weights = [read_weights(single.model, single.storage) for _, single in self.models]
        digests = [
            (name, weights.sha256) for (name, _), weights in zip(self.models, self._weights, strict=True)
        ]
        return Weights(blob=None, sha256=combined_digest(digests))

    def check_outputs(self, *, overwrite: bool) -> None:
        """Each model's output checked as its single-model run checks it (unsafe or foreign: refused)."""
        self.weights()
        assert self._weights is not None  # noqa: S101  # read just above
        for output, weights in zip(self.outputs, self._weights, strict=True):
            output.committed_here(functools.partial(str, weights.sha256), overwrite=overwrite)

    def hold(self, stack: contextlib.ExitStack[Any], *, overwrite: bool) -> None:
        """Each model's output checked (:meth:`check_outputs`), then leased until the run ends."""
        self.check_outputs(overwrite=overwrite)
        for output in self.outputs:
            stack.enter_context(output.take())

    def check_started(self, run_id: str, *, overwrite: bool) -> None:
        """Before any work: each model output is empty, this run's, or (``--overwrite``) to be cleared.

        Another run's commit or unfinished run there would otherwise be found only at the commit.
        """
        if overwrite:
            return
        for output in self.outputs:
            if output.location.exists(MANIFEST) and not output.committed_by(run_id):
                raise OutputExistsError(
                    f"{output.uri} holds another run's commit (a models: run writes each model's "
                    "output itself): pass --overwrite to redo it, or point output.uri elsewhere"
                )
            if output.location.exists(RUN_STATE):
                _check_run_id(output, run_id)

    def resolve(self) -> tuple[ModelSpec, tuple[Any, ...]]:
        """Every model resolved on the driver: the combined spec (names, digest, shared decode), payloads."""
        self.weights()
        assert self._weights is not None  # noqa: S101  # read just above
        resolved = [
            resolve_spec(single.model, single.preprocess, single.storage, weights)
            for (_, single), weights in zip(self.models, self._weights, strict=True)
        ]
        self._weights = [replace(w, blob=None, contents=None) for w in self._weights]  # the bytes: done
        specs = [spec for spec, _ in resolved]
        decoded, derivations = plan_shared_decode([spec.preprocessing for spec in specs])
        self.runs = tuple(
            ModelRun(name, spec, single.inference.precision, single.model.top_k, derivation)
            for (name, single), spec, derivation in zip(self.models, specs, derivations, strict=True)
        )
        payloads = tuple(payload for _, payload in resolved)
        self.pools = plan_pools(self.config, self.runs, payloads)
        pool_of = {name: index for index, pool in enumerate(self.pools) for name in pool.outputs}
        self.runs = tuple(replace(run, pool=pool_of[run.output]) for run in self.runs)
        digest = combined_digest([(run.output, run.spec.weights_sha256) for run in self.runs])
        combined = replace(
            specs[0],
            name="+".join(spec.name for spec in specs),
            weights_sha256=digest,
            random_init=any(spec.random_init for spec in specs),
            preprocessing=decoded,
        )
        return combined, payloads

    def clear(self) -> int:
        """``--overwrite``: every model output's own files deleted (the leases kept); how many."""
        return sum(output.clear() for output in self.outputs)

    def commit_models(self, listing: Listing, combined: RunOutput, record: RunRecord) -> None:
        """Split the combined parts into each model's output, read each back, check each budget, commit.

        A model output committed by this run already (an earlier attempt's) is left as it is.
        """
        run_id = record.summary["run_id"]
        parts = [
            name
            for name in combined.location.list_files(DATA_DIR)
            if name.endswith(".parquet") and not is_temporary(name)
        ]
        pending = []
        for run, (_, single), output in zip(self.runs, self.models, self.outputs, strict=True):
            if output.committed_by(run_id):
                continue
            _start(output, listing, run_id, single.config_hash(run.spec.weights_sha256), run)
            _split(combined, output, parts, run.output)
            result = output.tally(listing)
            model_record = _record_of(record, single, run, result)
            model_record.model["actor_pool"] = list(self.pools[run.pool].outputs)  # who shared its actor
            check_failure_budget(model_record, result, output.location.uri_of(DATA_DIR))
            pending.append((output, result, model_record))
        for output, result, model_record in pending:  # every output verified: now the commits
            output.commit(result, model_record)


def _start(output: RunOutput, listing: Listing, run_id: str, config_hash: str, run: ModelRun) -> None:
    """A model output's ``_inputs.parquet`` and ``_run.json``, as its single-model run has them (once)."""
    if output.location.exists(RUN_STATE):
        _check_run_id(output, run_id)
        return
    state = {"run_id": run_id, "config_hash": config_hash, "input_format": listing.format}
    state["weights_sha256"] = run.spec.weights_sha256
    run_state.start_run(output.location, fingerprints.inputs_table(listing), state)


def _check_run_id(output: RunOutput, run_id: str) -> None:
    """Refuse a model output holding another run's state (exit 11)."""
    started = output.location.read_json(RUN_STATE).get("run_id")
    if started != run_id:
        raise ResumeRefusedError(
            f"{output.uri} holds run {started}, not this run's ({run_id}): pass --overwrite to replace it"
        )


def _split(combined: RunOutput, output: RunOutput, parts: list[str], name: str) -> None:
    """Each combined part's rows of model ``name``, as a same-named part of its output (kept if whole)."""
    have = set(output.location.list_files(DATA_DIR))
    for part in parts:
        if part in have and _rows(output, part) == _rows(combined, part):
            continue
        output.location.write_table(part, model_table(combined.location.read_table(part), name))


def _rows(output: RunOutput, part: str) -> int | None:
    """Rows of a part already split (None: unreadable, e.g. cut short by a crash: written again)."""
    try:
        with output.location.fs.open(output.location.path_of(part), "rb") as handle:
            return int(pq.read_metadata(handle).num_rows)
    except (OSError, pa.ArrowInvalid):  # cut short or gone: written again
        return None


def _record_of(record: RunRecord, single: Config, run: ModelRun, result: Tally) -> RunRecord:
    """A model's ``_SUCCESS`` record: its config, counts, model (with how its pixels were derived), hash."""
    summary = {
        **record.summary,
        "succeeded": result.ok,
        "failed": result.failed,
        "failed_by_reason": result.failed_by_reason,
        "output_uri": single.output.uri,
    }
    model = {**run.spec.manifest_entry(), "shared_decode": run.derivation.manifest_entry(_decoded(record))}
    return replace(
        record,
        config=single,
        summary=summary,
        model=model,
        config_hash=single.config_hash(run.spec.weights_sha256),
    )


def _decoded(record: RunRecord) -> Any:
    """The shared decode's preprocessing, as the combined run's record has it."""
    from pipeline.compute.model import Preprocessing

    return Preprocessing(**record.model["preprocessing"])
