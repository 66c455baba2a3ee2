"""The commands that read committed outputs: ``inspect``, ``compare`` and ``report``.

Kept apart from :mod:`pipeline.cli.app` (which runs jobs) because they share only the storage
settings with it: each reads ``storage.*`` from ``--config``, the environment and ``--set``,
and nothing else of the job's config. :func:`add_commands` adds their arguments to the
parser :func:`pipeline.cli.app.build_parser` builds; :data:`COMMANDS` maps them to handlers.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

#: ``--cosine-threshold``'s default, as :data:`pipeline.review.compare.COSINE_THRESHOLD` (not imported:
#: the CLI starts without DuckDB); tests/pipeline/test_compare_embed.py keeps the two equal.
COSINE_THRESHOLD = 0.99

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from pipeline.config import StorageConfig

    Factory = Callable[[str, str, str], argparse.ArgumentParser]


def add_commands(command: Factory, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``inspect``, ``compare`` and ``report`` with ``command(name, summary, example)``."""
    inspect = command(
        "inspect",
        "summarise a committed output: outcomes, throughput, model, labels, confidence, failed rows",
        "pipeline inspect s3://bucket/preds/2026-12-01 --set storage.endpoint_url=http://minio:9000",
    )
    inspect.add_argument("output_uri", help="the output: a folder or an s3:// prefix holding _SUCCESS")
    compare = command(
        "compare",
        "compare two committed outputs row by row: agreement, label transitions or cosine, rows in one only",
        "pipeline compare s3://bucket/preds/resnet50 s3://bucket/preds/convnext --min-agreement 0.9",
    )
    compare.add_argument("base_uri", help="the reference output")
    compare.add_argument("new_uri", help="the output compared with it")
    compare.add_argument(
        "--min-agreement",
        type=float,
        metavar="X",
        help="exit 9 when the agreement is below X (0 to 1): top-1 labels for classify outputs; for "
        "embed outputs the fraction of rows whose cosine is at least --cosine-threshold",
    )
    compare.add_argument(
        "--cosine-threshold",
        type=float,
        default=COSINE_THRESHOLD,
        metavar="T",
        help=f"embed outputs: a row agrees when its cosine between the runs is at least T "
        f"(-1 to 1, default {COSINE_THRESHOLD})",
    )
    report = command(
        "report",
        "write one self-contained HTML page of a committed output: numbers, plots, pictures",
        "pipeline report s3://bucket/preds/2026-12-01 --html run.html",
    )
    report.add_argument("output_uri", help="the output: a folder or an s3:// prefix holding _SUCCESS")
    report.add_argument("--html", required=True, metavar="FILE", help="the page to write (a local file)")
    for reader in (inspect, compare):
        reader.add_argument("--json", action="store_true", help="print one JSON document (docs/inspect.md)")
    for reader in (inspect, compare, report):
        add_config_args(reader)  # only storage.* is read: the endpoint, region, timeouts


def _storage(args: argparse.Namespace) -> StorageConfig:
    """``storage.*`` from --config, the environment and --set; placeholders stand in for input and model."""
    from pipeline.config import load_config

    unused = {"input.uri": "-", "model.weights": None, "model.random_init": True}
    return load_config(args.config, args.overrides, flags=unused).storage


def cmd_inspect(args: argparse.Namespace) -> int:
    """``pipeline inspect``."""
    from pipeline.review import inspection, text

    doc = inspection.inspect_output(args.output_uri, _storage(args))
    print(json.dumps(doc, indent=2) if args.json else text.render_inspect(doc))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``pipeline compare``; the result is printed before a --min-agreement failure is reported."""
    from pipeline.review import compare as review_compare
    from pipeline.review import text

    if args.min_agreement is not None and not 0 <= args.min_agreement <= 1:
        raise ConfigError("--min-agreement", args.min_agreement, "expected a fraction from 0 to 1")
    if not -1 <= args.cosine_threshold <= 1:
        raise ConfigError("--cosine-threshold", args.cosine_threshold, "expected a cosine from -1 to 1")
    doc = review_compare.compare_outputs(
        args.base_uri, args.new_uri, _storage(args), cosine_threshold=args.cosine_threshold
    )
    print(json.dumps(doc, indent=2) if args.json else text.render_compare(doc))
    sys.stdout.flush()
    review_compare.check_agreement(doc, args.min_agreement)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``pipeline report``."""
    from pathlib import Path

    from pipeline.review import report as review_report

    html = Path(args.html)
    size = review_report.write_report(args.output_uri, _storage(args), html)
    print(f"report written: {html} ({size / 1024:,.0f} kB)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "inspect": cmd_inspect,
    "compare": cmd_compare,
    "report": cmd_report,
}
