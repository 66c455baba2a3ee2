"""``pipeline compare``: two committed outputs row by row, joined on ``row_id``.

Outputs of ``model.task: classify`` are compared by label: top-1 agreement, the overlap of
the first labels, label transitions. Outputs of ``embed`` by vector: each row's cosine
between the two runs (mean, percentiles, the fraction under ``--cosine-threshold``) and,
on a sample, whether each row's nearest neighbour is the same row in both runs. One of
each cannot be compared: :class:`~pipeline.errors.OutputsNotComparableError`. Both read
through :mod:`pipeline.review.inspection`'s DuckDB views, so the join streams and spills the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import AgreementTooLowError, OutputsNotComparableError
from pipeline.review.committed import SHOWN, Committed, connect, dicts, one, open_committed

if TYPE_CHECKING:
    import duckdb
    import numpy as np

    from pipeline.config import StorageConfig

TOP = 5  # the label overlap is over the first TOP labels of each row (fewer where top_k is smaller)
# An embedding that moved less than this (bf16 against fp32 gives > 0.999 on ResNets) agrees.
COSINE_THRESHOLD = 0.99
PERCENTILES = (1, 5, 25, 50)
NEIGHBOUR_SAMPLE = 1000  # rows whose nearest neighbours are found (a 1000 x 1000 similarity, per run)

# The first TOP labels of a row as TOP hashes: fixed-width columns cost the join far less than
# a list of strings (half the time at 10M rows). Labels within a row are distinct (top-k of
# distinct classes), so equal pairs count the shared labels; capped at the denominator where a
# labels file repeats a name.
_HASHES = ", ".join(
    f"if(top_k_labels[{i}] IS NULL, NULL, hash(top_k_labels[{i}])) AS h{i}" for i in range(1, TOP + 1)
)
_SHARED = " + ".join(
    f"coalesce((b.h{i} = n.h{j})::INTEGER, 0)" for i in range(1, TOP + 1) for j in range(1, TOP + 1)
)
_SIDE = f"SELECT row_id, status, label, least({TOP}, len(top_k_labels)) AS k, {_HASHES} FROM"
# Which difference a row is, if any; ``example`` is its row_id then (NULL for the millions of
# rows that agree), so compare shows examples of each.
_KIND = """
       CASE WHEN n.row_id IS NULL THEN 'only_in_base' WHEN b.row_id IS NULL THEN 'only_in_new'
            WHEN b.status = 'failed' AND n.status = 'ok' THEN 'failed_only_in_base'
            WHEN b.status = 'ok' AND n.status = 'failed' THEN 'failed_only_in_new' END AS kind,
       CASE WHEN kind IS NOT NULL THEN coalesce(b.row_id, n.row_id) END AS example"""
_BOTH_OK = "b.status = 'ok' AND n.status = 'ok'"
# One row per row_id of either run.
_PAIRS = f"""
CREATE TEMP TABLE pairs AS
SELECT b.row_id IS NOT NULL AS in_base, n.row_id IS NOT NULL AS in_new,
       b.status AS base_status, n.status AS new_status, b.label AS base_label, n.label AS new_label,
       CASE WHEN {_BOTH_OK} THEN least(b.k, n.k) END AS overlap_k,
       CASE WHEN {_BOTH_OK} THEN
         least({_SHARED}, least(b.k, n.k)) / nullif(least(b.k, n.k), 0) END AS overlap,
       {_KIND}
FROM ({_SIDE} base) AS b FULL OUTER JOIN ({_SIDE} new) AS n ON b.row_id = n.row_id
"""  # noqa: S608 - fixed text, no input in it
# The same for vectors: each pair's cosine (in DOUBLE, float16 vectors too), not the vectors.
_VECTOR_PAIRS = f"""
CREATE TEMP TABLE pairs AS
SELECT b.row_id IS NOT NULL AS in_base, n.row_id IS NOT NULL AS in_new,
       b.status AS base_status, n.status AS new_status, coalesce(b.row_id, n.row_id) AS row_id,
       CASE WHEN {_BOTH_OK} THEN
         list_cosine_similarity(b.embedding::DOUBLE[], n.embedding::DOUBLE[]) END AS cosine,
       {_KIND}
FROM (SELECT row_id, status, embedding FROM base) AS b
FULL OUTER JOIN (SELECT row_id, status, embedding FROM new) AS n ON b.row_id = n.row_id
"""  # noqa: S608 - fixed text, no input in it
_ROWS = """
SELECT count(*) FILTER (in_base) AS base, count(*) FILTER (in_new) AS new,
       count(*) FILTER (in_base AND in_new) AS in_both,
       count(*) FILTER (NOT in_new) AS only_in_base, count(*) FILTER (NOT in_base) AS only_in_new,
       count(*) FILTER (base_status = 'ok' AND new_status = 'ok') AS ok_in_both,
       count(*) FILTER (base_status = 'failed' AND new_status = 'failed') AS failed_in_both,
       count(*) FILTER (kind = 'failed_only_in_base') AS failed_only_in_base,
       count(*) FILTER (kind = 'failed_only_in_new') AS failed_only_in_new FROM pairs
"""
_KINDS = ("only_in_base", "only_in_new", "failed_only_in_base", "failed_only_in_new")
_DISTRIBUTION = """
WITH b AS (SELECT base_label AS label, count(*) AS n FROM pairs WHERE base_status = 'ok' GROUP BY 1),
     n AS (SELECT new_label AS label, count(*) AS n FROM pairs WHERE new_status = 'ok' GROUP BY 1)
SELECT label, coalesce(b.n, 0) AS base, coalesce(n.n, 0) AS new, new - base AS change
FROM b FULL OUTER JOIN n USING (label) WHERE change <> 0
"""
_QUANTILES = ", ".join(f"quantile_cont(cosine, {p / 100}) AS p{p}" for p in PERCENTILES)
# A cosine that is not a number (a zero or NaN vector on either side) counts under the threshold.
_COSINES = f"""
SELECT count(*) AS rows, avg(cosine) AS mean, min(cosine) AS min, max(cosine) AS max, {_QUANTILES},
       count(*) FILTER (NOT coalesce(cosine >= ?, false)) AS below_threshold
FROM (SELECT if(isfinite(cosine), cosine, NULL) AS cosine FROM pairs
      WHERE base_status = 'ok' AND new_status = 'ok')
"""  # noqa: S608 - fixed text, no input in it
_LOWEST = """
SELECT p.row_id, b.uri, p.cosine FROM pairs AS p JOIN base AS b USING (row_id)
WHERE p.base_status = 'ok' AND p.new_status = 'ok' ORDER BY p.cosine NULLS FIRST, p.row_id LIMIT ?
"""
_SAMPLE = """
WITH s AS (SELECT row_id FROM pairs WHERE base_status = 'ok' AND new_status = 'ok'
           ORDER BY hash(row_id), row_id LIMIT ?)
SELECT b.embedding::DOUBLE[] AS base, n.embedding::DOUBLE[] AS new
FROM s JOIN base AS b USING (row_id) JOIN new AS n USING (row_id) ORDER BY s.row_id
"""
_DIMS = "SELECT min(len(embedding)) AS low, max(len(embedding)) AS high FROM {side} WHERE status = 'ok'"


def compare_outputs(
    base_uri: str, new_uri: str, storage_config: StorageConfig, *, cosine_threshold: float = COSINE_THRESHOLD
) -> dict[str, Any]:
    """The ``pipeline compare --json`` document: ``new`` against ``base``, row by row."""
    base, new = open_committed(base_uri, storage_config), open_committed(new_uri, storage_config)
    tasks = _task(base), _task(new)
    if tasks[0] != tasks[1]:
        holds = {"classify": "labels", "embed": "vectors"}
        raise OutputsNotComparableError(
            f"cannot compare the {tasks[0]} output {base.uri} (it holds {holds[tasks[0]]}) with the "
            f"{tasks[1]} output {new.uri} (it holds {holds[tasks[1]]}); compare two outputs of the "
            "same model.task"
        )
    with connect(base=base, new=new) as db:
        if tasks[0] == "embed":
            return {"task": "embed", **_compare_vectors(db, base, new, cosine_threshold)}
        return {"task": "classify", **_compare_labels(db, base, new)}


def _task(output: Committed) -> str:
    return str(output.manifest.get("model", {}).get("task") or "classify")


def _compare_labels(db: duckdb.DuckDBPyConnection, base: Committed, new: Committed) -> dict[str, Any]:
    """Top-1 agreement, overlap of the first labels, transitions and label counts."""
    db.execute(_PAIRS)
    rows = one(db, _ROWS)
    agreeing, overlap, overlap_k = db.execute(
        "SELECT count(*) FILTER (base_label = new_label), avg(overlap), max(overlap_k) FROM pairs "
        "WHERE base_status = 'ok' AND new_status = 'ok'"
    ).fetchall()[0]
    transitions = dicts(
        db,
        "SELECT base_label AS base, new_label AS new, count(*) AS rows FROM pairs "
        "WHERE base_status = 'ok' AND new_status = 'ok' AND base_label <> new_label "
        "GROUP BY ALL ORDER BY rows DESC, base, new LIMIT ?",
        SHOWN,
    )
    gained = dicts(db, _DISTRIBUTION + " AND change > 0 ORDER BY change DESC, label LIMIT ?", SHOWN)
    lost = dicts(db, _DISTRIBUTION + " AND change < 0 ORDER BY change, label LIMIT ?", SHOWN)
    return {
        "base": _identity(base),
        "new": _identity(new),
        "rows": rows,
        "top1_agreement": agreeing / rows["ok_in_both"] if rows["ok_in_both"] else None,
        "top1_agreeing_rows": agreeing,
        "top5_overlap": None if overlap is None else float(overlap),
        "overlap_k": overlap_k,
        "label_transitions": transitions,
        "labels_gained": gained,
        "labels_lost": lost,
        "examples": _examples(db),
    }


def _compare_vectors(
    db: duckdb.DuckDBPyConnection, base: Committed, new: Committed, threshold: float
) -> dict[str, Any]:
    """Per-row cosine, its distribution and the rows under ``threshold``; neighbours on a sample."""
    dims = {name: one(db, _DIMS.format(side=name)) for name in ("base", "new")}
    if len({d[end] for d in dims.values() for end in ("low", "high")} - {None}) > 1:
        shown = {name: " to ".join(dict.fromkeys(map(str, d.values()))) for name, d in dims.items()}
        raise OutputsNotComparableError(
            f"cannot compare vectors of dimension {shown['base']} ({base.uri}) with vectors of "
            f"dimension {shown['new']} ({new.uri}): a cosine needs one dimension on both sides"
        )
    db.execute(_VECTOR_PAIRS)
    rows = one(db, _ROWS)
    cosine = dicts(db, _COSINES, threshold)[0]
    percentiles = {f"p{p}": cosine.pop(f"p{p}") for p in PERCENTILES}
    below, counted = cosine["below_threshold"], cosine["rows"]
    return {
        "base": _identity(base),
        "new": _identity(new),
        "rows": rows,
        "top1_agreement": None,
        "cosine": {
            **cosine,
            "percentiles": percentiles,
            "threshold": threshold,
            "fraction_below": below / counted if counted else None,
        },
        "agreement": (counted - below) / counted if counted else None,
        "neighbours": _neighbours(db),
        "lowest_cosine": dicts(db, _LOWEST, SHOWN),
        "examples": _examples(db),
    }


def _neighbours(db: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """How often a row's nearest other row is the same in both runs (on :data:`NEIGHBOUR_SAMPLE` rows)."""
    import numpy as np

    sample = db.execute(_SAMPLE, [NEIGHBOUR_SAMPLE]).fetchnumpy()
    count = len(sample["base"])
    if count < 2:  # noqa: PLR2004 - a nearest *other* row needs two
        return {"sample": count, "agreement": None}
    nearest = [_nearest(np.array(list(sample[side]), dtype=np.float64)) for side in ("base", "new")]
    return {"sample": count, "agreement": float(np.mean(nearest[0] == nearest[1]))}


def _nearest(vectors: np.ndarray) -> np.ndarray:
    """Each row's nearest other row by cosine (a zero vector is near nothing)."""
    import numpy as np

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.asarray(similarity.argmax(axis=1))


def _examples(db: duckdb.DuckDBPyConnection) -> dict[str, list[dict[str, Any]]]:
    """Up to :data:`SHOWN` rows of each difference, with URI, reason and error from the side that has them."""
    db.execute(
        "CREATE TEMP TABLE examples AS SELECT kind, example AS row_id FROM pairs WHERE example IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY kind ORDER BY example) <= ?",
        [SHOWN],
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for kind in _KINDS:
        side = "new" if kind in {"only_in_new", "failed_only_in_new"} else "base"
        found[kind] = dicts(
            db,
            f"SELECT row_id, uri, status, reason, error FROM {side} "  # noqa: S608 - a fixed name
            "WHERE row_id IN (SELECT row_id FROM examples WHERE kind = ?) ORDER BY row_id",
            kind,
        )
    return found


def _identity(output: Committed) -> dict[str, Any]:
    manifest = output.manifest
    model = manifest.get("model", {})
    return {
        "uri": output.uri,
        "run_id": manifest.get("run_id"),
        "model": {"name": model.get("name"), "sha256": model.get("sha256")},
        "config_hash": manifest.get("config_hash"),
    }


def check_agreement(result: dict[str, Any], minimum: float | None) -> None:
    """Raise :class:`AgreementTooLowError` when the agreement is below ``minimum``.

    Classify: top-1 agreement. Embed: the fraction of rows ok in both whose cosine is at
    least the threshold.
    """
    embed = result.get("task") == "embed"
    agreement = result["agreement"] if embed else result["top1_agreement"]
    if minimum is None or (agreement is not None and agreement >= minimum):
        return
    ok_in_both, unknown = result["rows"]["ok_in_both"], "unknown (no row is ok in both runs)"
    if embed:
        threshold = result["cosine"]["threshold"]
        at_or_above = ok_in_both - result["cosine"]["below_threshold"]
        shown = (
            f"the cosine agreement is {unknown}"
            if agreement is None
            else f"{agreement:.1%} of rows have cosine >= {threshold:g} ({at_or_above:,} of {ok_in_both:,})"
        )
        raise AgreementTooLowError(f"{shown}, below --min-agreement {minimum:.1%}")
    shown = unknown if agreement is None else f"{agreement:.1%}"
    raise AgreementTooLowError(
        f"top-1 agreement {shown} is below --min-agreement {minimum:.1%} "
        f"({result['top1_agreeing_rows']:,} of {ok_in_both:,} rows ok in both runs agree)"
    )
