"""The report's plots: matplotlib figures rendered to SVG, each returned as a ``data:`` URI.

Only matplotlib's object API is used (:class:`~matplotlib.figure.Figure`, no ``pyplot``): no
global backend or figure registry, so a report can be drawn in any thread of a running job.
Text is drawn as paths (``svg.fonttype: path``), so the SVG needs no font to view, and the
ids and metadata are fixed, so the same output gives the same bytes.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH, HEIGHT = 6.4, 3.0  # inches at 100 dpi: a plot fills half the page's width
OK_COLOUR, FAILED_COLOUR, BAR_COLOUR = "#2a7ab9", "#c8452c", "#5b8c5a"
LABEL_CHARS = 28  # longer label names are cut on the axis


def _figure(rows: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH, HEIGHT * (1 + 0.6 * (rows - 1))), dpi=100, layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", alpha=0.3)
    return figure, list(axes)


def _counts(axis: Any) -> None:
    """Whole numbers on an axis of row counts (no 0.5 of a row)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _svg(figure: Figure) -> str:
    import matplotlib as mpl

    buffer = io.BytesIO()
    with mpl.rc_context({"svg.fonttype": "path", "svg.hashsalt": "pipeline-report"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def throughput(points: list[list[float]]) -> str:
    """Images per second between the series' points (above) and rows done (below), over time."""
    figure, (rate, done) = _figure(rows=2)
    seconds = [point[0] for point in points]
    ok = [point[1] for point in points]
    failed = [point[2] for point in points]
    speeds = [
        (ok[i] + failed[i] - ok[i - 1] - failed[i - 1]) / (seconds[i] - seconds[i - 1])
        for i in range(1, len(points))
    ]
    rate.step(seconds[1:], speeds, where="pre", color=OK_COLOUR)
    rate.set_ylabel("images/s")
    done.plot(seconds, ok, color=OK_COLOUR, label="ok")
    done.plot(seconds, failed, color=FAILED_COLOUR, label="failed")
    done.set_ylabel("rows done")
    _counts(done.yaxis)
    done.set_xlabel("seconds since the attempt started")
    done.legend(loc="upper left", frameon=False)
    return _svg(figure)


def _bars(names: list[str], counts: list[int], colour: str, xlabel: str) -> str:
    figure, (ax,) = _figure()
    cut = [name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…" for name in names]
    positions = range(len(names))
    ax.barh(positions, counts, color=colour)
    ax.set_yticks(list(positions), cut)
    ax.invert_yaxis()  # the largest first, at the top
    ax.set_xlabel(xlabel)
    _counts(ax.xaxis)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", alpha=0.3)
    for position, count in zip(positions, counts, strict=True):
        ax.annotate(f"{count:,}", (count, position), xytext=(3, 0), textcoords="offset points", va="center")
    return _svg(figure)


def failures(by_reason: dict[str, int]) -> str:
    """Failed rows per reason, most first."""
    ranked = sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))
    return _bars([name for name, _ in ranked], [n for _, n in ranked], FAILED_COLOUR, "failed rows")


def labels(top: list[dict[str, Any]], others: int) -> str:
    """The most frequent top-1 labels of ok rows, and the rest as one bar."""
    names = [str(item["label"]) for item in top] + (["(all other labels)"] if others else [])
    counts = [int(item["rows"]) for item in top] + ([others] if others else [])
    return _bars(names, counts, BAR_COLOUR, "ok rows (top-1 label)")


def histogram(bins: list[dict[str, Any]], xlabel: str) -> str:
    """Rows per bin of an inspect histogram (confidence, or embedding norms)."""
    figure, (ax,) = _figure()
    lows = [item["low"] for item in bins]
    widths = [item["high"] - item["low"] for item in bins]
    ax.bar(
        lows, [item["rows"] for item in bins], width=widths, align="edge", color=OK_COLOUR, edgecolor="white"
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ok rows")
    _counts(ax.yaxis)
    return _svg(figure)
