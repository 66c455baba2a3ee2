"""The Grafana dashboard's shape: stable uid, variables, data source, what it shows.

Whether every query returns data is checked against a real run in test_observability_stack.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from monitoring_parts import GRAFANA_DIR, dashboard_targets

DASHBOARD_FILES = sorted(GRAFANA_DIR.glob("*.json"))
JOB_DASHBOARD = GRAFANA_DIR / "batch-inference-job.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return panels


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.name for p in DASHBOARD_FILES])
class TestEveryDashboard:
    def test_stable_uid_and_datasource_variable(self, path: Path) -> None:
        """A fixed uid (links survive re-imports) and a $datasource variable of Prometheus type."""
        dashboard = load(path)
        assert dashboard["uid"]
        assert len(dashboard["uid"]) <= 40
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"

    def test_every_query_uses_the_datasource_variable(self, path: Path) -> None:
        """Panels, targets and query variables all read from ${datasource}, never a hard-coded uid."""
        dashboard = load(path)
        for panel in all_panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == DATASOURCE, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE, variable["name"]

    def test_panel_ids_unique_and_layout_within_the_grid(self, path: Path) -> None:
        """Panel ids are unique; every panel fits Grafana's 24-column grid."""
        panels = all_panels(load(path))
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids))
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]


class TestJobDashboard:
    def test_uid(self) -> None:
        """The job overview keeps the uid alerts and runbooks link to."""
        assert load(JOB_DASHBOARD)["uid"] == "batch-inference-job"

    def test_pipeline_run_and_session_variables(self) -> None:
        """$pipeline and $run_id come from the pushed series; the hidden $session joins Ray's own metrics."""
        variables = {v["name"]: v for v in load(JOB_DASHBOARD)["templating"]["list"]}
        assert "pipeline_job_info" in variables["pipeline"]["query"]["query"]
        assert '$pipeline"' in variables["run_id"]["query"]["query"]
        assert "ray_pipeline_run_info" in variables["session"]["query"]["query"]
        assert variables["session"]["hide"] == 2

    def test_every_query_is_scoped_to_the_run(self) -> None:
        """Each query filters on the pipeline (and run) or the run's Ray session: no cluster-wide sums."""
        for title, ref, expr in dashboard_targets(load(JOB_DASHBOARD)):
            assert '$pipeline"' in expr or '"$session"' in expr, (title, ref)
            if "pipeline_job_last_success" not in expr and '"$session"' not in expr:
                assert 'run_id="$run_id"' in expr, (title, ref)

    def test_shows_what_on_call_needs(self) -> None:
        """The panels on-call needs: status, progress, throughput, ETA, failures, latency, resources."""
        titles = " | ".join(panel["title"] for panel in all_panels(load(JOB_DASHBOARD))).lower()
        for topic in (
            "status",
            "progress",
            "throughput",
            "eta",
            "failed rows by reason",
            "latency p50 / p95",
            "write task latency",
            "gpu utilisation",
            "gpu memory",
            "cpu utilisation by worker group",
            "object store and spilling",
            "actor pool",
            "model load time",
            "batch size",
            "phase",
        ):
            assert topic in titles, topic

    def test_phase_panel_shows_every_phase_the_driver_names(self) -> None:
        """The Phase timeline reads pipeline_job_phase by phase; its help names each phase the driver has."""
        from pipeline.ops.metrics import JOB_PHASES

        (panel,) = [p for p in all_panels(load(JOB_DASHBOARD)) if p["title"] == "Phase"]
        (target,) = panel["targets"]
        assert target["expr"].startswith("max by (phase) (pipeline_job_phase{")
        assert target["legendFormat"] == "{{phase}}"
        missing = [name for name in JOB_PHASES if name.replace("_", " ") not in panel["description"].lower()]
        assert missing == []
