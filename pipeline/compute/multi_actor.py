"""Several models in one inference actor (``models:``): one decoded batch, each model in turn.

:class:`ClassifyOrEmbedMany` holds one :class:`~pipeline.compute.inference_actor.ClassifyOrEmbed`
per model, each built from its own :class:`~pipeline.compute.model.ModelSpec` and payload (the
actor never names a library), and gives each model its input derived from the shared crop
(:func:`~pipeline.compute.shared_decode.derive`). It returns one combined table per batch: the
decode's outcome and the shared columns once, then each model's own columns under
``<output>::`` (:func:`pipeline.schema.model_table` splits them again, one output per model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.compute.inference_actor import ActorSettings, ClassifyOrEmbed, _strings
from pipeline.compute.shared_decode import Derivation, derive
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

        payloads = ray.get(payloads_ref)
        self.models = models
        self.heads = [
            ClassifyOrEmbed(part.spec, payload, part.settings, None, carried_ref)
            for part, payload in zip(models, payloads, strict=True)
        ]
        self.progress = progress
        self.combined_name, self.combined_sha256 = combined
        self.run_id = models[0].settings.labels.run_id

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Every model's output rows of the batch, in one table (no rows once the run was asked to stop)."""
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
        if self.progress is not None and count:
            ok = int((status == STATUS_OK).sum())
            failed: dict[str, int] = {}
            for reason in _strings(batch["reason"])[:count][status != STATUS_OK]:
                failed[str(reason)] = failed.get(str(reason), 0) + 1
            self.progress.add.remote(ok, failed)
        first = tables[0]
        columns: dict[str, pa.Array] = {
            "row_id": first.column("row_id"),
            "uri": first.column("uri"),
            "status": pa.array(status, pa.string()),
            "reason": pa.array(_strings(batch["reason"])[:count], pa.string()),
            "error": pa.array(_strings(batch["error"])[:count], pa.string()),
            "model_name": pa.array([self.combined_name] * count, pa.string()),
            "model_sha256": pa.array([self.combined_sha256] * count, pa.string()),
            "run_id": first.column("run_id"),
        }
        for name in first.column_names:  # carried and shard columns: once, after run_id
            if name not in _SHARED and name not in own_columns(first):
                columns[name] = first.column(name)
        for part, table in zip(self.models, tables, strict=True):
            for name in own_columns(table):
                columns[model_column(part.output, name)] = table.column(name)
        return pa.table(columns)


def own_columns(table: pa.Table) -> list[str]:
    """A model table's own columns, in its order: outcome, predictions, model (not ids, carried or shard)."""
    return [name for name in table.column_names if name in _OWN]
