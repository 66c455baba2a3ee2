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
from typing import TYPE_CHECKING, Any

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
        combined: tuple[str, str],
        progress: Any = None,
        carried_ref: Any = None,
    ) -> None:
        """``payloads_ref``: the models' payloads, one object-store tuple; ``combined``: (names, digest)."""
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
        self.combined_name, self.combined_sha256 = combined
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

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Every model's output rows of the batch, in one table (no rows once the run was asked to stop)."""
        started = time.perf_counter()
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
        count = tables[0].num_rows
        status = _strings(batch["status"])[:count]
        if count:
            self._count(status, _strings(batch["reason"])[:count], started)
        first = tables[0]
        decoded = {  # the decode's outcome, the run's models: the combined part's own columns
            "status": pa.array(status, pa.string()),
            "reason": pa.array(_strings(batch["reason"])[:count], pa.string()),
            "error": pa.array(_strings(batch["error"])[:count], pa.string()),
            "model_name": pa.array([self.combined_name] * count, pa.string()),
            "model_sha256": pa.array([self.combined_sha256] * count, pa.string()),
        }
        fields, columns = [], []  # each with its field as the model's schema has it (types, not-null)
        for name in (*SHARED_LEADING, *decoded, "run_id"):
            fields.append(first.schema.field(name))
            columns.append(decoded[name] if name in decoded else first.column(name))
        for name in first.column_names:  # carried and shard columns: once, after run_id
            if name not in _SHARED and name not in own_columns(first):
                fields.append(first.schema.field(name))
                columns.append(first.column(name))
        for part, table in zip(self.models, tables, strict=True):
            for name in own_columns(table):
                fields.append(table.schema.field(name).with_name(model_column(part.output, name)))
                columns.append(table.column(name))
        return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _count_failed(reasons: np.ndarray) -> dict[str, int]:
    """Failed rows by reason."""
    failed: dict[str, int] = {}
    for reason in reasons:
        failed[str(reason)] = failed.get(str(reason), 0) + 1
    return failed


def own_columns(table: pa.Table) -> list[str]:
    """A model table's own columns, in its order: outcome, predictions, model (not ids, carried or shard)."""
    return [name for name in table.column_names if name in _OWN]
