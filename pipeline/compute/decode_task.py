"""The decode stage, as Ray Data calls it in CPU tasks: fetch each row's bytes, decode, crop."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.compute.decode import DecodeSettings, decode
from pipeline.inputs.reading import ReadLimits, fetch_all
from pipeline.inputs.shards import records_fetched
from pipeline.ops import redaction
from pipeline.ops.logs import bad_input_sampler
from pipeline.ops.metrics import STAGE_DECODE, RunLabels, worker_metrics
from pipeline.ops.progress import report_decoded, stop_requested
from pipeline.schema import (
    BYTES_COLUMN,
    CARRIED_INDEX_COLUMN,
    CARRIED_ROW_COLUMN,
    ENCODING_COLUMN,
    ENCODING_JPEG,
    ENCODING_RAW,
    FINGERPRINT_FIELD,
    IMAGE_COLUMN,
    RECORD_BYTES_COLUMN,
    SHARD_INDEX_FIELD,
    STATUS_FAILED,
    STATUS_OK,
    FailureReason,
)

if TYPE_CHECKING:
    from pipeline import storage


@dataclass(frozen=True)
class DecodeJob:
    """What every decode task of a run is given: where and how to read, how to decode, whose metrics."""

    filesystems: storage.Filesystems
    limits: ReadLimits
    base: str | None  # a relative manifest entry is read beside the manifest
    settings: DecodeSettings
    fetch_threads: int
    labels: RunLabels


def decode_batch(
    batch: dict[str, np.ndarray], *, job: DecodeJob, tracker: Any = None
) -> dict[str, np.ndarray]:
    """Fetch and decode one batch of ``row_id``/``uri`` rows into uint8 crops.

    Once the run's ``tracker`` says stop, the batch's rows are dropped unread: the run ends
    soon after, without them, and the next run does them.

    Each row is read through the filesystem of its own URI's scheme, within ``limits``
    (size, time, allowed roots); a relative manifest entry is read beside the manifest (``base``).
    Records of shards bring their bytes (:data:`RECORD_BYTES_COLUMN`): nothing is fetched.

    With ``settings.keep_jpeg`` the rows carry bytes instead (:data:`BYTES_COLUMN`):
    JPEGs left for the inference device, or the raw crop of what was decoded here.
    """
    started = time.perf_counter()
    limits, settings, labels = job.limits, job.settings, job.labels
    if stop_requested(tracker):
        batch = {name: column[:0] for name, column in batch.items()}
    uris = [str(uri) for uri in batch["uri"]]
    crop = settings.crop_size
    images = np.zeros((0 if settings.keep_jpeg else len(uris), crop, crop, 3), dtype=np.uint8)
    encoded = np.full(len(uris), b"", dtype=object)
    encodings = np.full(len(uris), None, dtype=object)
    status = np.full(len(uris), STATUS_OK, dtype=object)
    reasons = np.full(len(uris), None, dtype=object)
    errors = np.full(len(uris), None, dtype=object)
    if RECORD_BYTES_COLUMN in batch:
        fetched = records_fetched(batch, limits.max_bytes)
    else:
        fetched = fetch_all(job.filesystems, uris, limits, job.fetch_threads, job.base)
    for index, (data, fetch_reason, detail) in enumerate(fetched):
        result = decode(data, settings) if fetch_reason is None else None
        if result is not None and result.encoded is not None:
            encoded[index], encodings[index] = result.encoded, ENCODING_JPEG
            continue
        if result is not None and result.crop is not None:
            if settings.keep_jpeg:
                encoded[index], encodings[index] = result.crop.tobytes(), ENCODING_RAW
            else:
                images[index] = result.crop
            continue
        status[index] = STATUS_FAILED
        reasons[index] = str(fetch_reason or (result.reason if result else FailureReason.DECODE_ERROR))
        errors[index] = detail or (result.detail if result else "")
    failed = Counter(reason for reason in reasons if reason is not None)
    if failed:
        sampler = bad_input_sampler(labels.pipeline, labels.run_id)
        for bad in np.flatnonzero(status == STATUS_FAILED):
            sampler.record(STAGE_DECODE, str(reasons[bad]), uris[bad], str(errors[bad] or ""))
    report_decoded(tracker, len(uris))  # one decode per input, whatever the models
    metrics = worker_metrics(labels.pipeline, labels.run_id)
    metrics.count_rows(STAGE_DECODE, len(uris) - failed.total(), failed.total())
    metrics.count_failures(STAGE_DECODE, failed)
    if uris:
        metrics.observe_batch(STAGE_DECODE, time.perf_counter() - started, len(uris))
    pixels = (
        {BYTES_COLUMN: encoded, ENCODING_COLUMN: encodings} if settings.keep_jpeg else {IMAGE_COLUMN: images}
    )
    passed = (CARRIED_INDEX_COLUMN, SHARD_INDEX_FIELD.name, CARRIED_ROW_COLUMN, FINGERPRINT_FIELD.name)
    carried = {name: batch[name] for name in passed if name in batch}
    return {
        "row_id": batch["row_id"],
        "uri": np.array(
            [redaction.redact_url(uri) for uri in uris], dtype=object
        ),  # fetched: signatures masked from here on
        **pixels,
        "status": status,
        "reason": reasons,
        "error": errors,
        **carried,
    }
