"""Regenerate docs/report.png, the README's picture of ``pipeline report``.

A demo run (``pipeline demo``: generated images, three broken files, random weights), its report
(``pipeline report``), then the page opened and photographed exactly as the browser test does
(scripts/report_browser.py, beside this script), and shrunk to keep the repository small. Needs Debian's
chromium and chromium-driver (``scripts/setup.sh dev`` as root)::

    .venv/bin/python scripts/report-screenshot.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from report_browser import browser_missing, visit  # beside this script, on sys.path when it runs

ROOT = Path(__file__).resolve().parent.parent

WIDTH = 1000  # pixels of the committed picture


def main() -> int:
    """Run the demo, write its report, photograph it; exit 1 if the page misbehaves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="demo images (default 120)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args()
    reason = browser_missing()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="report-shot-") as scratch:
        work = Path(scratch)
        pipeline = [sys.executable, "-m", "pipeline"]
        demo = [*pipeline, "demo", "--images", str(args.images), "--workdir", str(work / "demo")]
        subprocess.run(demo, check=True, stdout=subprocess.DEVNULL)
        page = work / "report.html"
        subprocess.run(
            [*pipeline, "report", str(work / "demo" / "predictions"), "--html", str(page)], check=True
        )
        seen = visit(page, work / "full.png")
        outside = [url for url in seen.requests if not url.startswith(("data:", "file:"))]
        if seen.errors or outside or seen.broken_images:
            print(f"the page misbehaved: {seen.errors} {outside} {seen.broken_images}", file=sys.stderr)
            return 1
        with Image.open(work / "full.png") as full:
            small = full.convert("RGB").resize(
                (WIDTH, round(full.height * WIDTH / full.width)), Image.LANCZOS
            )
        small.quantize(colors=256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
