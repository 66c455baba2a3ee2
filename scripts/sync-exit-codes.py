#!/usr/bin/env python3
"""Write README.md's table of exit codes from pipeline/errors.py's EXIT_CODES.

The table sits between two HTML comments in README.md; tests/pipeline/test_exit_codes.py
fails while it differs from ``pipeline.errors.exit_code_table()``. Run after changing a code:

    .venv/bin/python scripts/sync-exit-codes.py        (from anywhere in the repository)
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.errors import exit_code_table  # noqa: E402

README = REPO / "README.md"
START, END = "<!-- exit codes: generated", "<!-- end of exit codes -->"


def main() -> int:
    """Replace the lines between the markers; print whether anything changed."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n", text.index(START)) + 1
    updated = text[:start] + exit_code_table() + text[text.index(END) :]
    README.write_text(updated, encoding="utf-8")
    print(f"{README}: {'updated' if updated != text else 'already current'}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
