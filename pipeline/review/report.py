"""``pipeline report``: one self-contained HTML page of a committed output, for people.

The numbers are :func:`pipeline.review.inspection.inspect_committed`'s (the ``inspect --json``
document, same queries); the plots are :mod:`pipeline.review.report_plots`'s SVGs, the pictures
:mod:`pipeline.review.thumbnails`'. Everything is embedded as ``data:`` URIs and the page has a
Content-Security-Policy that allows nothing else, so it opens offline and makes no request.
The HTML is a Jinja2 template (``templates/report.html.j2``), escaped automatically.

With ``output.report: true`` the job writes the page as ``_report.html`` beside ``_SUCCESS``
after the commit (:func:`write_after_commit`); a failure there is a warning, never a failed
run: the output is committed already. docs/inspect.md: what each section shows.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline._version import __version__
from pipeline.outputs.layout import REPORT
from pipeline.review import committed, inspection, report_plots, thumbnails

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.config import StorageConfig
    from pipeline.outputs.layout import OutputLocation

# Failed rows whose file was read and may still show something (a cut-off JPEG shows its top).
# The others were not read, or not safely (missing, refused, too large, too slow): names only.
PICTURED_FAILURES = frozenset({"truncated", "decode_error", "model_error"})


def render(output: committed.Committed, storage_config: StorageConfig) -> str:
    """The page of a committed output, as HTML text."""
    import jinja2

    doc = inspection.inspect_committed(output)
    manifest = output.manifest
    series = manifest.get("progress") or {}
    failed_groups: dict[str, list[dict[str, Any]]] = {}
    for row in doc["failed_sample"]:
        failed_groups.setdefault(str(row["reason"]), []).append(row)
    shown = [row["uri"] for row in doc["lowest_confidence"]]
    shown += [row["uri"] for row in doc["failed_sample"] if row["reason"] in PICTURED_FAILURES]
    run_input = (manifest.get("config") or {}).get("input", {})
    pictures = thumbnails.thumbnails(
        list(dict.fromkeys(shown)),
        storage_config,
        run_input.get("allowed_roots") or [],
        run_input.get("allowed_schemes"),  # None: a run from before the key, which read every scheme
    )
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.review", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = _number
    environment.filters["pct"] = lambda part, whole: f"{part / whole:.1%}" if whole else "-"
    return environment.get_template("report.html.j2").render(
        doc=doc,
        plots=_plots(doc, series.get("points") or []),
        series_points=len(series.get("points") or []),
        series_every=series.get("every_s"),
        pictures={picture.uri: picture for picture in pictures},
        failed_groups=failed_groups,
        versions=manifest.get("versions") or {},
        embedding_spec=(manifest.get("model") or {}).get("embedding"),
        version=__version__,
        generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def _number(value: float | None, decimals: int = 0) -> str:
    """``1,234`` or ``1,234.5``; ``-`` for a missing value."""
    return "-" if value is None else f"{value:,.{decimals}f}"


def _plots(doc: dict[str, Any], points: list[list[float]]) -> dict[str, str | None]:
    """Each plot the page shows, or None where there is nothing to draw."""
    plots: dict[str, str | None] = {
        "throughput": report_plots.throughput(points) if len(points) >= 2 else None,  # noqa: PLR2004 - a line
        "failures": report_plots.failures(doc["failed_by_reason"]) if doc["failed_by_reason"] else None,
    }
    ok = doc["counts"]["ok"]
    if doc["embedding"] is not None:
        norms = doc["embedding"]["norms"]
        finite = any(item["rows"] for item in norms["bins"])
        plots["norms"] = report_plots.histogram(norms["bins"], "L2 norm") if finite else None
        return plots
    top = doc["labels"]["top"]
    others = ok - sum(item["rows"] for item in top)
    plots["labels"] = report_plots.labels(top, others) if top else None
    bins = doc["confidence"]["bins"]
    plots["confidence"] = report_plots.histogram(bins, "top-1 score") if ok else None
    return plots


def write_report(uri: str, storage_config: StorageConfig, html: Path) -> int:
    """``pipeline report URI --html FILE``: the page of the output at ``uri``; returns its size in bytes."""
    page = render(committed.open_committed(uri, storage_config), storage_config).encode("utf-8")
    html.write_bytes(page)
    return len(page)


def write_after_commit(location: OutputLocation, storage_config: StorageConfig, log: Any) -> bool:
    """``output.report``: write ``_report.html`` beside ``_SUCCESS``; on any failure log a warning only."""
    try:
        page = render(committed.open_committed(location.uri, storage_config), storage_config)
        location.write_bytes(REPORT, page.encode("utf-8"))
    except Exception as exc:  # the run is committed: a report problem must not fail or undo it
        log.warning(
            "report not written (the run is committed)",
            report=location.uri_of(REPORT),
            error=storage.describe(exc),
        )
        return False
    log.info("report written", report=location.uri_of(REPORT))
    return True
