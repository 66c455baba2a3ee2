"""Several models in one inference actor (``models:``): one decoded batch, each model in turn.

:class:`ClassifyOrEmbedMany` holds one :class:`~pipeline.compute.inference_actor.ClassifyOrEmbed`
per model, each built from its own :class:`~pipeline.compute.model.ModelSpec` and payload (the
actor never names a library), and gives each model its input derived from the shared crop
(:func:`~pipeline.compute.shared_decode.derive`). It returns one combined table per batch: the
decode's outcome and the shared columns once, then each model's own columns under
``<output>::`` (:func:`pipeline.schema.model_table` splits them again, one output per model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from pipeline.compute.inference_actor import ActorSettings, ClassifyOrEmbed, _strings
from pipeline.compute.shared_decode import Derivation, derive
from pipeline.ops.metrics import STAGE_INFERENCE, STAGE_MODEL, worker_metrics
from pipeline.ops.progress import stop_requested
from pipeline.schema import (
    CLASSIFY_FIELDS,
    EMBEDDING_COLUMN,
    IDENTITY_FIELDS,
    IMAGE_COLUMN,
    MODEL_COLUMN_SEPARATOR,
    PROVENANCE_FIELDS,
    SHARED_LEADING,
    STATUS_OK,
    model_column,
)

if TYPE_CHECKING:
    from pipeline.compute.model import ModelSpec


@dataclass(frozen=True)
class ModelRun:
    """One model of a ``models:`` run as the driver resolved it: output name, spec, precision, input."""

    output: str
    spec: ModelSpec
    precision: str  # its inference.precision (models[].precision, else the run's)
    top_k: int
    derivation: Derivation
    pool: int = 0  # the actor pool it runs in (pipeline.run.pools): the same pool, the same actor


class Combined(NamedTuple):
    """What a combined table says of the run's models, and where this actor's pool stands among the pools.

    Several pools (:mod:`pipeline.run.pools`) are chained: every pool but the last passes the
    batch on (``passes``), the decoded crop included, with its models' ``<output>::`` columns
    added; the last builds the combined table, its models' columns in ``outputs``' order.
    """

    name: str  # every model's name, joined
    sha256: str  # the combined digest
    outputs: tuple[str, ...] = ()  # every model's output, in the config's order (empty: this actor's)
    passes: bool = False


@dataclass(frozen=True)
class ModelPart:
    """One model of the actor: its output name, spec, settings (its precision), input derivation."""

    output: str
    spec: ModelSpec
    settings: ActorSettings
    derivation: Derivation


#: The columns of a model's table that the combined table holds once, not under the model's name.
_SHARED = frozenset({*SHARED_LEADING, "run_id"})
#: The columns a model's table has of its own (either task); carried and shard columns are shared.
_OWN = (
    frozenset({f.name for f in (*IDENTITY_FIELDS, *CLASSIFY_FIELDS, *PROVENANCE_FIELDS)} | {EMBEDDING_COLUMN})
    - _SHARED
)


class ClassifyOrEmbedMany:
    """Inference actor for several models: the batch is decoded once, each model runs on it in turn.

    The name keeps ``Classify`` in it: the dashboards select the inference operator by that word.
    """

    def __init__(
        self,
        models: tuple[ModelPart, ...],
        payloads_ref: Any,
        combined: tuple[str, str] | Combined,
        progress: Any = None,
        carried_ref: Any = None,
    ) -> None:
        """``payloads_ref``: the models' payloads, one object-store tuple; ``combined``: :class:`Combined`."""
        import ray

        fetched = isinstance(payloads_ref, ray.ObjectRef)  # else the payloads themselves
        payloads = ray.get(payloads_ref) if fetched else payloads_ref
        self.models = models
        self.heads = [
            ClassifyOrEmbed(part.spec, payload, part.settings, None, carried_ref)
            for part, payload in zip(models, payloads, strict=True)
        ]
        for part, head in zip(models, self.heads, strict=True):
            head.stage, head.model_label = STAGE_MODEL, part.output
        self.metrics = worker_metrics(*self._labels(models))
        self.progress = progress
        self.combined = Combined(*combined)
        self.outputs = self.combined.outputs or tuple(part.output for part in models)
        self.run_id = models[0].settings.labels.run_id

    @staticmethod
    def _labels(models: tuple[ModelPart, ...]) -> tuple[str, str]:
        labels = models[0].settings.labels
        return labels.pipeline, labels.run_id

    def _count(self, status: np.ndarray, reasons: np.ndarray, started: float) -> None:
        """The whole call, every model: stage "inference" counts each input once; the progress tracker too."""
        ok = int((status == STATUS_OK).sum())
        self.metrics.count_rows(STAGE_INFERENCE, ok, len(status) - ok)
        self.metrics.observe_batch(STAGE_INFERENCE, time.perf_counter() - started, ok)
        if self.progress is not None:
            self.progress.add.remote(ok, _count_failed(reasons[status != STATUS_OK]))

    def __call__(self, batch: dict[str, np.ndarray] | pa.Table) -> pa.Table:
        """Every model's output rows of the batch, in one table (no rows once the run was asked to stop).

        Chained pools take and (but the last) give Arrow tables: what passes on is untouched, the
        earlier pools' ``<output>::`` columns and the decoded crop included.
        """
        started = time.perf_counter()
        arrow: pa.Table | None = None
        earlier: dict[str, list[tuple[pa.Field, Any]]] = {}
        if isinstance(batch, pa.Table):
            arrow, (batch, earlier) = batch, _split_earlier(batch)
        tables = self._run_models(batch)
        if self.combined.passes:  # not the last pool: the batch goes on, with these models' columns
            return _with_columns(arrow, tables[0].num_rows, self._own(tables))
        return self._combine(batch, tables, earlier, started)

    def _run_models(self, batch: dict[str, np.ndarray]) -> list[pa.Table]:
        """Each model's output table of the batch, its input derived from the shared crop (none: stopping)."""
        stopping = stop_requested(self.progress)
        tables = []
        for part, head in zip(self.models, self.heads, strict=True):
            if stopping:
                rows = {name: column[:0] for name, column in batch.items()}
            elif IMAGE_COLUMN in batch and not part.derivation.identity:
                rows = {**batch, IMAGE_COLUMN: derive(np.asarray(batch[IMAGE_COLUMN]), part.derivation)}
            else:
                rows = batch
            tables.append(head(rows))
        return tables

    def _combine(
        self,
        batch: dict[str, np.ndarray],
        tables: list[pa.Table],
        earlier: dict[str, list[tuple[pa.Field, Any]]],
        started: float,
    ) -> pa.Table:
        """The combined table: the shared columns once, then every model's, earlier pools' included."""
        count = tables[0].num_rows
        status = _strings(batch["status"])[:count]
        if count:
            self._count(status, _strings(batch["reason"])[:count], started)
        first = tables[0]
        decoded = {  # the decode's outcome, the run's models: the combined part's own columns
            "status": pa.array(status, pa.string()),
            "reason": pa.array(_strings(batch["reason"])[:count], pa.string()),
            "error": pa.array(_strings(batch["error"])[:count], pa.string()),
            "model_name": pa.array([self.combined.name] * count, pa.string()),
            "model_sha256": pa.array([self.combined.sha256] * count, pa.string()),
        }
        fields, columns = [], []  # each with its field as the model's schema has it (types, not-null)
        for name in (*SHARED_LEADING, *decoded, "run_id"):
            fields.append(first.schema.field(name))
            columns.append(decoded[name] if name in decoded else first.column(name))
        for name in first.column_names:  # carried and shard columns: once, after run_id
            if name not in _SHARED and name not in own_columns(first):
                fields.append(first.schema.field(name))
                columns.append(first.column(name))
        mine = {**earlier, **self._own(tables)}
        for output in self.outputs:  # every model's columns in the config's order, whichever pool ran it
            for field, column in mine[output]:
                fields.append(field)
                columns.append(column)
        return pa.Table.from_arrays(columns, schema=pa.schema(fields))

    def _own(self, tables: list[pa.Table]) -> dict[str, list[tuple[pa.Field, Any]]]:
        """Each of this actor's models' own columns, named ``<output>::<column>``, with their fields."""
        return {
            part.output: [
                (table.schema.field(name).with_name(model_column(part.output, name)), table.column(name))
                for name in own_columns(table)
            ]
            for part, table in zip(self.models, tables, strict=True)
        }


def _split_earlier(table: pa.Table) -> tuple[dict[str, np.ndarray], dict[str, list[tuple[pa.Field, Any]]]]:
    """A chained pool's input: the batch as Ray Data's numpy format has it; earlier pools' columns."""
    from ray.data.block import BlockAccessor

    earlier: dict[str, list[tuple[pa.Field, Any]]] = {}
    for field in table.schema:
        if MODEL_COLUMN_SEPARATOR in field.name:
            output = field.name.split(MODEL_COLUMN_SEPARATOR, 1)[0]
            earlier.setdefault(output, []).append((field, table.column(field.name)))
    plain = table.drop_columns([field.name for columns in earlier.values() for field, _ in columns])
    batch = BlockAccessor.for_block(plain).to_batch_format("numpy")
    return batch, earlier


def _with_columns(table: pa.Table | None, count: int, own: dict[str, list[tuple[pa.Field, Any]]]) -> pa.Table:
    """The pool's input table (its first ``count`` rows: none once stopping) with ``own`` added."""
    if table is None:
        raise TypeError("a pool that passes its batch on takes Arrow tables (batch_format='pyarrow')")
    table = table.slice(0, count)
    for columns in own.values():
        for field, column in columns:
            table = table.append_column(field, column)
    return table


def _count_failed(reasons: np.ndarray) -> dict[str, int]:
    """Failed rows by reason."""
    failed: dict[str, int] = {}
    for reason in reasons:
        failed[str(reason)] = failed.get(str(reason), 0) + 1
    return failed


def own_columns(table: pa.Table) -> list[str]:
    """A model table's own columns, in its order: outcome, predictions, model (not ids, carried or shard)."""
    return [name for name in table.column_names if name in _OWN]
