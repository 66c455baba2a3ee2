"""Row ids: the stable id of an input, the same on every run (the output's ``row_id`` column)."""

from __future__ import annotations

import hashlib

ROW_ID_HEX_CHARS = 20


def row_id(uri: str) -> str:
    """Stable id of an input: the same URI gives the same id on every run."""
    return hashlib.sha256(uri.encode()).hexdigest()[:ROW_ID_HEX_CHARS]
