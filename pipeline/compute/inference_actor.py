"""The inference stage, as Ray Data calls it: :class:`ClassifyOrEmbed`, the actor, one model each.

Whichever the task (classify or embed): the model is loaded once per actor, failed rows pass
through untouched, and the output is the task's Parquet schema of :mod:`pipeline.schema`.
The decode stage before it runs in CPU tasks (:mod:`pipeline.compute.decode_task`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.compute.inference import Predictor
from pipeline.inputs.shards import unpack_carried
from pipeline.ops.logs import bad_input_sampler
from pipeline.ops.metrics import STAGE_DECODE, STAGE_INFERENCE, RunLabels, worker_metrics
from pipeline.ops.progress import stop_requested
from pipeline.schema import (
    BYTES_COLUMN,
    CARRIED_INDEX_COLUMN,
    CARRIED_ROW_COLUMN,
    EMBEDDING_COLUMN,
    ENCODING_COLUMN,
    FINGERPRINT_FIELD,
    IMAGE_COLUMN,
    SHARD_INDEX_FIELD,
    STATUS_FAILED,
    STATUS_OK,
    FailureReason,
    output_schema,
)

if TYPE_CHECKING:
    from pipeline.compute.decode import DecodeSettings
    from pipeline.compute.inference import InferenceSettings
    from pipeline.compute.model import ModelSpec


@dataclass(frozen=True)
class ActorSettings:
    """What every inference actor of a run is built with, beside the model and its weights."""

    inference: InferenceSettings
    top_k: int
    labels: RunLabels
    device_decode: DecodeSettings | None = None  # set: the rows carry JPEG bytes to decode here
    shards: pa.Schema | None = None  # a run over shards, whose records carry these columns (empty: none)


def _strings(values: np.ndarray) -> np.ndarray:
    """A string column as objects, with Arrow nulls (NaN after conversion) back to None."""
    return np.array([value if isinstance(value, str) else None for value in values], dtype=object)


class ClassifyOrEmbed:
    """Inference actor: one model per actor, one forward pass per batch of good rows.

    It classifies, or embeds (``spec.embedding``). The name keeps ``Classify`` in it: the
    dashboards select its Ray Data operator by that word (``operator=~".*Classify.*"``).
    """

    def __init__(
        self,
        spec: ModelSpec,
        state_dict_ref: Any,
        settings: ActorSettings,
        progress: Any = None,
        carried_ref: Any = None,
    ) -> None:
        """``state_dict_ref``, ``carried_ref``: object-store references, read once per actor."""
        import ray

        labels, shards = settings.labels, settings.shards

        # A reference, or (several models in one actor, pipeline.compute.multi_actor) the payload itself.
        fetched = isinstance(state_dict_ref, ray.ObjectRef)
        state_dict = ray.get(state_dict_ref) if fetched else state_dict_ref
        # The carried columns, read once per actor; rows find theirs by CARRIED_INDEX_COLUMN.
        self._carried: pa.Table | None = ray.get(carried_ref) if carried_ref is not None else None
        self.spec = spec
        self.labels = labels
        self.predictor = Predictor(spec, state_dict, settings.inference, top_k=settings.top_k)
        self.progress = progress
        self.device_decode = settings.device_decode  # set: the rows carry JPEG bytes to decode here
        self.metrics = worker_metrics(labels.pipeline, labels.run_id)
        # The model label names the model in the per-model panels: its name here; a models: run's
        # actor sets stage "model" and each model's output name (its whole call stays "inference").
        self.stage, self.model_label = STAGE_INFERENCE, spec.name
        self.metrics.model_load_seconds.set(self.predictor.load_seconds)
        self._label_array = np.array(spec.labels, dtype=object)
        self._empty = self.predictor.predict(np.zeros((0, 1, 1, 3), np.uint8))  # the outputs' shapes
        embedding = spec.embedding
        self._shards = shards
        carried = self._carried.schema if self._carried is not None else shards
        with_shard = shards is not None
        self._schema = (
            output_schema("embed", embedding.dim, embedding.dtype, carried, shards=with_shard)
            if embedding
            else output_schema(carried=carried, shards=with_shard)
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Classify (or embed) the rows whose status is ok; return the output rows of the whole batch.

        A batch not started when the run was asked to stop returns no rows: not done, not written.
        """
        if stop_requested(self.progress):
            return self._schema.empty_table()
        started = time.perf_counter()
        count = len(batch["row_id"])
        status = _strings(batch["status"])
        reasons = _strings(batch["reason"])
        errors = _strings(batch["error"])
        good = np.flatnonzero(status == STATUS_OK)
        outputs = [np.zeros((count, *empty.shape[1:]), empty.dtype) for empty in self._empty]
        if len(good):
            try:
                good, images = self._images(batch, good, status, reasons, errors)
                for output, values in zip(outputs, self.predictor.predict(images), strict=True):
                    output[good] = values
            except Exception as exc:
                status[good] = STATUS_FAILED
                reasons[good] = str(FailureReason.MODEL_ERROR)
                errors[good] = f"{type(exc).__name__}: {exc}"[:200]
                self.metrics.count_failures(STAGE_INFERENCE, {FailureReason.MODEL_ERROR: len(good)})
                bad_input_sampler(self.labels.pipeline, self.labels.run_id).record(
                    STAGE_INFERENCE, FailureReason.MODEL_ERROR, str(batch["uri"][good[0]]), errors[good[0]]
                )
        ok_mask = status == STATUS_OK
        failed = Counter(str(reason) for reason in reasons[~ok_mask])
        self.metrics.count_rows(self.stage, int(ok_mask.sum()), failed.total(), self.model_label)
        self.metrics.observe_batch(self.stage, time.perf_counter() - started, len(good), self.model_label)
        reading = self.predictor.gpu_stats()
        if reading is not None:
            self.metrics.observe_gpu(reading.utilization, reading.memory_used_bytes)
        if self.progress is not None:
            self.progress.add.remote(int(ok_mask.sum()), dict(failed))
        columns = {
            "row_id": pa.array(batch["row_id"], pa.string()),
            "uri": pa.array(batch["uri"], pa.string()),
            "status": pa.array(status, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "error": pa.array(errors, pa.string()),
            **(
                self._embedding(outputs[0], ok_mask)
                if self.spec.embedding
                else self._top_k(outputs[0], outputs[1], ok_mask)
            ),
            "model_name": pa.array([self.spec.name] * count, pa.string()),
            "model_sha256": pa.array([self.spec.weights_sha256] * count, pa.string()),
            "run_id": pa.array([self.labels.run_id] * count, pa.string()),
            FINGERPRINT_FIELD.name: _fingerprints(batch, count),
        }
        if self._carried is not None:  # Arrow's take: the manifest's types and nulls, untouched
            rows = self._carried.take(pa.array(batch[CARRIED_INDEX_COLUMN], pa.int64()))
            columns.update({name: rows.column(name).combine_chunks() for name in rows.column_names})
        if self._shards is not None:
            columns[SHARD_INDEX_FIELD.name] = pa.array(batch[SHARD_INDEX_FIELD.name], pa.int32())
            if len(self._shards):
                columns.update(unpack_carried(batch[CARRIED_ROW_COLUMN], self._shards))
        return pa.Table.from_pydict(columns, schema=self._schema)

    def _images(
        self,
        batch: dict[str, np.ndarray],
        good: np.ndarray,
        status: np.ndarray,
        reasons: np.ndarray,
        errors: np.ndarray,
    ) -> tuple[np.ndarray, Any]:
        """The crops of the ``good`` rows; rows whose JPEG fails to decode here are marked failed."""
        if self.device_decode is None:
            return good, np.asarray(batch[IMAGE_COLUMN])[good]
        from pipeline.compute.device_decode import device_crops

        crops, failures = device_crops(
            batch[BYTES_COLUMN][good], batch[ENCODING_COLUMN][good], self.device_decode, self.predictor.device
        )
        for offset, failure in failures.items():
            row = good[offset]
            status[row], reasons[row], errors[row] = STATUS_FAILED, str(failure.reason), failure.detail
            bad_input_sampler(self.labels.pipeline, self.labels.run_id).record(
                STAGE_DECODE, str(failure.reason), str(batch["uri"][row]), failure.detail
            )
        reasons_here = Counter(str(failure.reason) for failure in failures.values())
        self.metrics.count_failures(STAGE_DECODE, reasons_here)
        return np.delete(good, list(failures)), crops

    def _top_k(self, ids: np.ndarray, scores: np.ndarray, ok_mask: np.ndarray) -> dict[str, pa.Array]:
        """The classification columns; null on failed rows."""
        count, k = ids.shape
        offsets = pa.array(np.arange(0, (count + 1) * k, k, dtype=np.int32))
        mask = pa.array(~ok_mask)
        label_values = self._label_array[ids.reshape(-1)]

        def lists(values: pa.Array) -> pa.Array:
            return pa.ListArray.from_arrays(offsets, values, mask=mask)

        top1_labels = np.where(ok_mask, label_values.reshape(count, k)[:, 0], None)
        return {
            "top_k_ids": lists(pa.array(ids.reshape(-1), pa.int32())),
            "top_k_labels": lists(pa.array(label_values, pa.string())),
            "top_k_scores": lists(pa.array(scores.reshape(-1), pa.float32())),
            "label": pa.array(top1_labels, pa.string()),
            "score": pa.array(scores[:, 0], pa.float32(), mask=~ok_mask),
        }

    def _embedding(self, vectors: np.ndarray, ok_mask: np.ndarray) -> dict[str, pa.Array]:
        """The ``embedding`` column in the configured dtype; null on failed rows."""
        vector_type = self._schema.field(EMBEDDING_COLUMN).type
        values = pa.array(vectors.reshape(-1).astype(vector_type.value_type.to_pandas_dtype()))
        column = pa.FixedSizeListArray.from_arrays(values, type=vector_type, mask=pa.array(~ok_mask))
        return {EMBEDDING_COLUMN: column}


def _fingerprints(batch: dict[str, np.ndarray], count: int) -> pa.Array:
    """The rows' input fingerprints; nulls where there are none.

    A batch whose fingerprints are all null (a manifest's entries) reaches numpy as floats
    (NaN), not strings: those are nulls too.
    """
    values = batch.get(FINGERPRINT_FIELD.name)
    if values is None or values.dtype.kind not in "OUS":
        return pa.nulls(count, pa.string())
    return pa.array(values, pa.string())
