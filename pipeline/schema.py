"""The output contract: one row per input, its columns, and the failure reasons.

Every input appears exactly once in the output, either with ``status == "ok"``
and its predictions, or with ``status == "failed"`` and a ``reason`` from
:class:`FailureReason` (plus a short ``error`` detail). Consumers find failures
with one filter: ``status = 'failed'``.

What an ok row holds depends on ``model.task`` (:func:`output_schema`): ``classify``
writes the top-k columns (``top_k_ids``, ``top_k_labels``, ``top_k_scores``,
``label``, ``score``) and no ``embedding``; ``embed`` writes ``embedding``, a
fixed-size list of ``dim`` float32 or float16 values, and none of the top-k
columns. A failed row's task columns are null.

Then ``fingerprint``: what the listing said of the input when its row was made (size and
version: :mod:`pipeline.inputs.fingerprints`), so an incremental run can tell from the row alone
whether its input changed since; null where the listing gives none (a manifest without a
version column). Outputs written before this column existed lack it; readers must not need it.

A run over shards writes ``shard_index`` next (the record's shard, :mod:`pipeline.inputs.shards`).
After these come the carried columns (``input.passthrough_columns``), on ok and failed
rows alike, with the types the manifest holds (:mod:`pipeline.inputs.manifest`).
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa


class FailureReason(StrEnum):
    """Why a row has no predictions."""

    NOT_FOUND = "not_found"
    PERMISSION_DENIED = "permission_denied"
    UNREADABLE = "unreadable"
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    TOO_MANY_PIXELS = "too_many_pixels"
    DECODE_ERROR = "decode_error"
    MODEL_ERROR = "model_error"
    NOT_A_REGULAR_FILE = "not_a_regular_file"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    OUTSIDE_ALLOWED_ROOTS = "outside_allowed_roots"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    INVALID_URI = "invalid_uri"
    NO_IMAGE = "no_image"  # a shard's record without image bytes (a null cell, no image member)
    UNSAFE_MEMBER = "unsafe_member"  # a tar member named with "..", or an absolute path
    SCHEME_NOT_ALLOWED = "scheme_not_allowed"
    ADDRESS_NOT_ALLOWED = "address_not_allowed"
    HTTP_ERROR = "http_error"
    REDIRECT_LOOP = "redirect_loop"


STATUS_OK = "ok"
STATUS_FAILED = "failed"

# Columns that travel between stages but are not written: the uint8 crop, or (when JPEGs
# are decoded on the inference device) bytes and what they hold.
IMAGE_COLUMN = "image"
BYTES_COLUMN = "data"
ENCODING_COLUMN = "encoding"
ENCODING_JPEG = "jpeg"  # the file's own bytes, decoded by the inference actor
ENCODING_RAW = "raw"  # a crop decoded on the CPU worker: crop_size x crop_size x 3 uint8
# A row's index into the carried columns' table, from the listing to the inference actor.
CARRIED_INDEX_COLUMN = "carried_index"
# A shard's record (pipeline.inputs.shards): its image bytes, read with the shard, and its carried
# values, pickled together (their Arrow types are restored by the inference actor).
RECORD_BYTES_COLUMN = "record_bytes"
CARRIED_ROW_COLUMN = "carried_row"
IN_FLIGHT_COLUMNS = (
    IMAGE_COLUMN,
    BYTES_COLUMN,
    ENCODING_COLUMN,
    CARRIED_INDEX_COLUMN,
    RECORD_BYTES_COLUMN,
    CARRIED_ROW_COLUMN,
)
# Written by runs over shards: the record's shard, as its position in _inputs.parquet.
SHARD_INDEX_FIELD = pa.field("shard_index", pa.int32(), nullable=False)


IDENTITY_FIELDS = (
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("error", pa.string()),
)
CLASSIFY_FIELDS = (
    pa.field("top_k_ids", pa.list_(pa.int32())),
    pa.field("top_k_labels", pa.list_(pa.string())),
    pa.field("top_k_scores", pa.list_(pa.float32())),
    pa.field("label", pa.string()),
    pa.field("score", pa.float32()),
)
PROVENANCE_FIELDS = (
    pa.field("model_name", pa.string(), nullable=False),
    pa.field("model_sha256", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
)
# The input's fingerprint when the row was made (pipeline.inputs.fingerprints); nullable, and
# absent from outputs written before it was added.
FINGERPRINT_FIELD = pa.field("fingerprint", pa.string())
EMBEDDING_COLUMN = "embedding"
EMBEDDING_TYPES = {"float32": pa.float32(), "float16": pa.float16()}


def output_schema(
    task: str = "classify",
    embedding_dim: int = 0,
    embedding_dtype: str = "float32",
    carried: pa.Schema | None = None,
    *,
    shards: bool = False,
) -> pa.Schema:
    """The Parquet schema every part file of a ``task`` run has (``embed``: vectors of ``embedding_dim``).

    ``carried``: the carried columns' schema, appended as it is. ``shards``: a run over
    shards, whose rows say which shard they come from (:data:`SHARD_INDEX_FIELD`).
    """
    if task == "embed":
        vector = pa.list_(EMBEDDING_TYPES[embedding_dtype], embedding_dim)
        task_fields: tuple[pa.Field, ...] = (pa.field(EMBEDDING_COLUMN, vector),)
    else:
        task_fields = CLASSIFY_FIELDS
    shard = (SHARD_INDEX_FIELD,) if shards else ()
    return pa.schema(
        [*IDENTITY_FIELDS, *task_fields, *PROVENANCE_FIELDS, FINGERPRINT_FIELD, *shard, *(carried or [])]
    )


def reserved_columns() -> frozenset[str]:
    """Every name the pipeline writes (either task) or passes between stages: no carried column's."""
    written = {field.name for field in (*IDENTITY_FIELDS, *CLASSIFY_FIELDS, *PROVENANCE_FIELDS)}
    return frozenset(
        {*written, EMBEDDING_COLUMN, FINGERPRINT_FIELD.name, SHARD_INDEX_FIELD.name, *IN_FLIGHT_COLUMNS}
    )


#: A run of several models (``models:``) writes one combined part per batch before each model's
#: output gets its own: ``<output name>::<column>`` holds that model's columns.
MODEL_COLUMN_SEPARATOR = "::"


#: The columns every model's output starts with, taken once in a combined part.
SHARED_LEADING = ("row_id", "uri")


def model_column(output: str, name: str) -> str:
    """The combined part's name of model output ``output``'s column ``name``."""
    return f"{output}{MODEL_COLUMN_SEPARATOR}{name}"


def model_table(combined: pa.Table, output: str) -> pa.Table:
    """Model output ``output``'s rows of a combined part, in the columns its single-model run writes."""
    prefix = f"{output}{MODEL_COLUMN_SEPARATOR}"
    fields = [
        (field.name, field.with_name(field.name.removeprefix(prefix)))
        for field in combined.schema
        if field.name.startswith(prefix)
    ]
    shared_rest = [  # carried and shard columns: after run_id, as output_schema puts them
        f for f in combined.schema if MODEL_COLUMN_SEPARATOR not in f.name and f.name not in _COMBINED_ONLY
    ]
    order = [
        *((name, combined.schema.field(name)) for name in SHARED_LEADING),
        *fields,
        *((f.name, f) for f in shared_rest),
    ]
    return pa.Table.from_arrays(
        [combined.column(name) for name, _ in order], schema=pa.schema([field for _, field in order])
    )


#: A combined part's own columns (the decode's outcome, the run's models), not any model's.
_COMBINED_ONLY = frozenset({*SHARED_LEADING, "status", "reason", "error", "model_name", "model_sha256"})
