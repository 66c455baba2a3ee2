"""What a committed output holds: ``pipeline inspect``, and the readers ``pipeline compare`` shares.

Every aggregate is a DuckDB query over the parts the manifest lists: DuckDB streams them
(only the columns a query names, a row group at a time) and keeps aggregates, never the
rows, so memory does not grow with the output. The one large
intermediate, compare's join on ``row_id`` (:mod:`pipeline.review.compare`), runs under
:data:`MEMORY_LIMIT` and spills to a temporary folder beyond it. Remote parts are read
through the job's own fsspec filesystem (``storage.*``), so DuckDB needs no S3 extension of
its own. docs/inspect.md: the fields.

:func:`inspect_output` returns a plain dict (the ``--json`` document, also what
:mod:`pipeline.review.report` draws); :mod:`pipeline.review.text` turns it into text. An ``embed`` output
(``model.task``) has vectors, not labels: inspect gives their dimension, norms and NaN/Inf
count instead of labels and confidence.

"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.review.committed import SHOWN, Committed, connect, dicts, one, open_committed

if TYPE_CHECKING:
    import duckdb

    from pipeline.config import StorageConfig


BINS = 10  # confidence histogram: [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]


FAILED_PER_REASON = 3  # the failed sample takes up to this many rows of each reason


LOWEST_LABELS = 3  # the lowest-confidence rows carry their first labels and scores


def inspect_output(uri: str, storage_config: StorageConfig) -> dict[str, Any]:
    """The ``pipeline inspect --json`` document of one committed output."""
    return inspect_committed(open_committed(uri, storage_config))


def inspect_committed(output: Committed) -> dict[str, Any]:
    """:func:`inspect_output` of an output already opened (the report also reads its manifest)."""
    manifest = output.manifest
    task = str(manifest.get("model", {}).get("task") or "classify")
    with connect(rows=output) as db:
        outcomes = dicts(db, "SELECT status, reason, count(*) AS n FROM rows GROUP BY ALL ORDER BY ALL")
        failed = dicts(
            db,
            "SELECT row_id, uri, reason, error FROM rows WHERE status = 'failed' "
            "QUALIFY row_number() OVER (PARTITION BY reason ORDER BY uri, row_id) <= ? "
            "ORDER BY reason, uri, row_id LIMIT ?",
            FAILED_PER_REASON,
            2 * SHOWN,
        )
        predictions = _embeddings(db) if task == "embed" else _predictions(db)
    ok = sum(item["n"] for item in outcomes if item["status"] == "ok")
    by_reason = {item["reason"]: item["n"] for item in outcomes if item["status"] == "failed"}
    counts = {"rows": sum(item["n"] for item in outcomes), "ok": ok, "failed": sum(by_reason.values())}
    promised = manifest.get("counts", {})
    return {
        "uri": output.uri,
        "run_id": manifest.get("run_id"),
        "job": manifest.get("job"),
        "committed_at": manifest.get("committed_at"),
        "counts": counts,
        "failed_by_reason": dict(sorted(by_reason.items())),
        "consistent_with_manifest": (
            (counts["rows"], counts["ok"], counts["failed"])
            == (promised.get("inputs"), promised.get("succeeded"), promised.get("failed"))
            and counts["failed"] == sum(manifest.get("failed_by_reason", {}).values())
        ),
        "throughput": {
            key: manifest.get(key)
            for key in ("seconds", "images_per_second", "processed_this_run", "resumed")
        },
        "timeline_s": manifest.get("timings_s", {}),
        "model": {
            key: manifest.get("model", {}).get(key) for key in ("name", "sha256", "weights", "random_init")
        },
        "config_hash": manifest.get("config_hash"),
        "incremental": manifest.get("incremental"),  # output.previous: carried, computed, ...; None: full
        "parts": len(output.parts),
        "warnings": manifest.get("warnings", []),
        "task": task,
        **predictions,
        "failed_sample": failed,
    }


def _bins(rows: list[dict[str, Any]], low: float = 0.0, high: float = 1.0) -> list[dict[str, Any]]:
    """:data:`BINS` equal bins from ``low`` to ``high`` with the ``{bin, n}`` counts of a query."""
    per_bin = {item["bin"]: item["n"] for item in rows}
    width = (high - low) / BINS

    def edge(i: int) -> float:  # 12 significant digits: unit norms' bins can be 1e-7 wide
        return float(f"{low + i * width:.12g}")

    return [{"low": edge(i), "high": edge(i + 1), "rows": per_bin.get(i, 0)} for i in range(BINS)]


def _predictions(db: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """A ``classify`` output's labels, confidence histogram and lowest-confidence rows."""
    labels = dicts(
        db,
        "SELECT label, count(*) AS rows FROM rows WHERE status = 'ok' GROUP BY label "
        "ORDER BY rows DESC, label LIMIT ?",
        SHOWN,
    )
    distinct = one(db, "SELECT count(DISTINCT label) AS n FROM rows WHERE status = 'ok'")["n"]
    stats = one(
        db, "SELECT avg(score) AS mean, min(score) AS min, max(score) AS max FROM rows WHERE status = 'ok'"
    )
    bins = dicts(
        db,
        "SELECT least(floor(score * ?), ? - 1)::INTEGER AS bin, count(*) AS n FROM rows "
        "WHERE status = 'ok' AND score IS NOT NULL GROUP BY bin",
        BINS,
        BINS,
    )
    lowest = dicts(
        db,
        "SELECT row_id, uri, label, score, top_k_labels[1:?] AS top_labels, top_k_scores[1:?] AS top_scores "
        "FROM rows WHERE status = 'ok' ORDER BY score, row_id LIMIT ?",
        LOWEST_LABELS,
        LOWEST_LABELS,
        SHOWN,
    )
    return {
        "labels": {"distinct": distinct, "top": labels},
        "confidence": {
            **{key: None if value is None else float(value) for key, value in stats.items()},
            "bins": _bins(bins),
        },
        "lowest_confidence": lowest,
        "embedding": None,
    }


# Each ok row's vector length, L2 norm and count of NaN/Inf values (DOUBLE: float16 vectors too).
_VECTORS = """
SELECT len(embedding) AS dim, sqrt(list_sum(list_transform(embedding, lambda x: x::DOUBLE * x))) AS norm,
       len(list_filter(embedding, lambda x: NOT isfinite(x::DOUBLE))) AS nonfinite
FROM rows WHERE status = 'ok'
"""


_VECTOR_STATS = f"""
SELECT min(dim) AS dim, max(dim) AS max_dim, avg(norm) FILTER (isfinite(norm)) AS norm_mean,
       min(norm) FILTER (isfinite(norm)) AS norm_min, max(norm) FILTER (isfinite(norm)) AS norm_max,
       count(*) FILTER (nonfinite > 0) AS rows_with_nan_or_inf,
       coalesce(sum(nonfinite), 0)::BIGINT AS nan_or_inf_values
FROM ({_VECTORS})
"""  # noqa: S608 - fixed text, no input in it


_NORM_BINS = f"""
SELECT least(floor((norm - ?) / ? * {BINS}), {BINS} - 1)::INTEGER AS bin, count(*) AS n
FROM ({_VECTORS}) WHERE isfinite(norm) GROUP BY bin
"""  # noqa: S608 - fixed text, no input in it


def _embeddings(db: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """An ``embed`` output's vectors: dimension, norms (finite ones) and NaN/Inf count; no labels."""
    stats = one(db, _VECTOR_STATS)
    low, high = stats["norm_min"] or 0.0, stats["norm_max"] or 0.0
    bins = dicts(db, _NORM_BINS, low, (high - low) or 1.0)
    norms = {
        key: None if stats[key] is None else float(stats[key])
        for key in ("norm_mean", "norm_min", "norm_max")
    }
    embedding = {
        "dim": stats["dim"] if stats["dim"] == stats["max_dim"] else None,
        "norms": {**norms, "bins": _bins(bins, low, high if high > low else low + 1.0)},
        "rows_with_nan_or_inf": stats["rows_with_nan_or_inf"],
        "nan_or_inf_values": stats["nan_or_inf_values"],
    }
    return {"labels": None, "confidence": None, "lowest_confidence": [], "embedding": embedding}
