#!/usr/bin/env python3
"""Store the chart's renders, which tests/deploy/test_chart_renders.py compares byte for byte.

The chart rendered with its defaults and with each values-<env>.yaml goes to
tests/deploy/renders/<default|env>.yaml: Helm's manifest text, exactly. A refactoring of the
templates must leave these files unchanged; a change meant to alter what the chart renders
(or a new chart version, which is in the helm.sh/chart label) stores them again on purpose,
and the diff in the commit shows what changed:

    .venv/bin/python deploy/helm/render-snapshots.py        (from anywhere in the repository)

Helm installs into a cluster, so this renders with the tests' harness: the real Helm library
(helm-sdkpy) installing into the fake Kubernetes API (deploy/helm/harness).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "helm" / "harness"))

from deploy_manifests import RENDERS_DIR, render_values, standalone_helm  # noqa: E402


def main() -> int:
    """Render each values file and store its manifest; remove renders of values files now gone."""
    RENDERS_DIR.mkdir(exist_ok=True)
    renders = render_values()
    for stale in RENDERS_DIR.glob("*.yaml"):
        if stale.stem not in renders:
            stale.unlink()
    with standalone_helm() as helm:
        for name, values in renders.items():
            path = RENDERS_DIR / f"{name}.yaml"
            rendered = helm.install(values).result["manifest"].encode()
            changed = not path.exists() or path.read_bytes() != rendered
            path.write_bytes(rendered)
            print(f"{path.relative_to(REPO)}: {'updated' if changed else 'unchanged'}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
