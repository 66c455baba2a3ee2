"""The chart's rendered manifests equal, byte for byte, the renders stored in renders/.

A refactoring of the templates must leave every render unchanged. A change meant to alter what
the chart renders stores them again, and the commit's diff shows what it changed:
.venv/bin/python deploy/helm/render-snapshots.py
"""

from __future__ import annotations

import difflib

import pytest
from deploy_manifests import RENDERS_DIR, HelmRunner, Release, render_values

RENDERS = list(render_values())
REGENERATE = "if the change is meant, run .venv/bin/python deploy/helm/render-snapshots.py"


def test_one_stored_render_per_values_file() -> None:
    """renders/ holds a file for the defaults and each environment, and nothing else."""
    assert sorted(p.stem for p in RENDERS_DIR.glob("*.yaml")) == sorted(RENDERS), REGENERATE


@pytest.mark.parametrize("name", RENDERS)
def test_render_equals_stored(releases: dict[str, Release], name: str) -> None:
    """The manifest Helm renders is the stored one, byte for byte."""
    stored = RENDERS_DIR / f"{name}.yaml"
    assert stored.exists(), f"no stored render {stored.name}: {REGENERATE}"
    rendered = releases[name].result["manifest"].encode()
    if rendered != stored.read_bytes():
        diff = difflib.unified_diff(
            stored.read_text(encoding="utf-8").splitlines(keepends=True),
            rendered.decode().splitlines(keepends=True),
            f"renders/{stored.name}",
            "rendered",
        )
        pytest.fail(f"the chart renders other than renders/{stored.name} ({REGENERATE}):\n{''.join(diff)}")


@pytest.mark.parametrize("name", RENDERS)
def test_render_is_deterministic(helm: HelmRunner, releases: dict[str, Release], name: str) -> None:
    """Rendering the same values again gives the same bytes (no map-order or time dependence)."""
    again = helm.install(render_values()[name]).result["manifest"]
    assert again == releases[name].result["manifest"]
