"""docs/observability.md lists what the code exports and alerts on."""

from __future__ import annotations

import re

from monitoring_parts import ALERTS_DIR, REPO, load_yaml

DOC = (REPO / "docs" / "observability.md").read_text(encoding="utf-8")
METRICS_SOURCE = (REPO / "pipeline" / "ops" / "metrics.py").read_text(encoding="utf-8")
DEFINITION = re.compile(r"\b(Gauge|RayGauge|Counter|Histogram)\(\s*\"(\w+)\"")


def exported_names() -> set[str]:
    """Every metric defined in pipeline/ops/metrics.py, under the name Prometheus sees."""
    names = set()
    for kind, name in DEFINITION.findall(METRICS_SOURCE):
        if kind == "Gauge":  # prometheus_client, the driver's pushed metrics
            names.add(name)
        else:  # ray.util.metrics: ray_ prefix, _total for counters
            names.add(f"ray_{name}_total" if kind == "Counter" else f"ray_{name}")
    return names


class TestObservabilityDoc:
    def test_every_metric_is_listed(self) -> None:
        """Each metric pipeline/ops/metrics.py defines appears in the metric tables by its exported name."""
        names = exported_names()
        assert len(names) >= 19
        missing = [name for name in sorted(names) if f"| `{name}` |" not in DOC]
        assert missing == []

    def test_every_alert_is_listed(self) -> None:
        """Each alert of the rule files has a row in the alert table."""
        for path in ALERTS_DIR.glob("*.yaml"):
            for group in load_yaml(path)["groups"]:
                for rule in group["rules"]:
                    assert f"| `{rule['alert']}` |" in DOC, rule["alert"]
