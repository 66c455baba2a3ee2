#!/usr/bin/env python3
"""Embed the pipeline config's JSON schema in the chart's values.schema.json.

The chart value ``config`` is written verbatim as the job's config.yaml, so Helm validates it
with the schema ``pipeline config --schema`` prints (pydantic, ``additionalProperties: false``):
a typo in the config then fails ``helm install`` rather than the job minutes later.
The pipeline's definitions are hoisted into the values schema's ``$defs`` with a ``pipeline``
prefix, because Helm resolves ``$ref`` from the root of values.schema.json.

Run after changing pipeline/config/ (tests/deploy checks the copy is current):

    .venv/bin/python deploy/helm/sync-config-schema.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

VALUES_SCHEMA = Path(__file__).resolve().parent / "batch-inference" / "values.schema.json"
PREFIX = "pipeline"


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                f"#/$defs/{PREFIX}{value.removeprefix('#/$defs/')}" if key == "$ref" else _rewrite_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def pipeline_schema() -> dict[str, Any]:
    """The pipeline config's schema, from the CLI the image ships."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "config", "--schema"], check=True, capture_output=True, text=True
    ).stdout
    schema: dict[str, Any] = json.loads(out)
    return schema


def embedded(values_schema: dict[str, Any], config_schema: dict[str, Any]) -> dict[str, Any]:
    """``values_schema`` with its pipeline definitions replaced by those of ``config_schema``."""
    config_schema = dict(config_schema)
    nested = config_schema.pop("$defs", {})
    defs = {name: value for name, value in values_schema["$defs"].items() if not name.startswith(PREFIX)}
    defs[f"{PREFIX}Config"] = _rewrite_refs(config_schema)
    for name, value in sorted(nested.items()):
        defs[f"{PREFIX}{name}"] = _rewrite_refs(value)
    return {**values_schema, "$defs": defs}


def main() -> int:
    """Rewrite values.schema.json in place; print whether it changed."""
    current = json.loads(VALUES_SCHEMA.read_text(encoding="utf-8"))
    updated = embedded(current, pipeline_schema())
    text = json.dumps(updated, indent=2) + "\n"
    changed = text != VALUES_SCHEMA.read_text(encoding="utf-8")
    VALUES_SCHEMA.write_text(text, encoding="utf-8")
    print(f"{VALUES_SCHEMA}: {'updated' if changed else 'already current'}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
