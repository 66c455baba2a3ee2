"""PodMonitor, and the alert rules and dashboards synced from monitoring/.

The NetworkPolicies are tested in test_chart_network.py.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_manifests import CHART, REPO, HelmRunner, Release, rayjob_spec_of, validate

SYNC_SCRIPT = REPO / "deploy" / "helm" / "sync-monitoring.sh"
SOURCES = {
    "alerts": (REPO / "monitoring" / "alerts", "*.yaml"),
    "grafana": (REPO / "monitoring" / "grafana", "*.json"),
}
SAMPLE_RULES = """\
groups:
  - name: batch-inference.sample
    rules:
      - alert: BatchInferenceSampleAlert
        expr: vector(1) > 2
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: a sample
          description: a sample alert for the chart test
          runbook_url: https://example.com/runbook
"""
SAMPLE_DASHBOARD = {"uid": "batch-inference-sample", "title": "Sample", "panels": [], "schemaVersion": 39}


def ray_pod_labels(release: Release) -> list[dict[str, str]]:
    """Labels of every Ray pod template (head and worker groups)."""
    labels = []
    for obj in release.objects:
        if obj["kind"] in ("RayJob", "CronWorkflow"):
            cluster = rayjob_spec_of(obj)["rayClusterSpec"]
            groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
            labels += [group["template"]["metadata"]["labels"] for group in groups]
    return labels


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector selects these labels."""
    return all(labels.get(key) == value for key, value in selector.items())


class TestPodMonitor:
    """Prometheus scrapes Ray's metrics port on every Ray pod."""

    @pytest.mark.parametrize("values", ["default", "staging", "prod"])
    def test_selects_every_ray_pod_on_the_metrics_port(
        self, releases: dict[str, Release], values: str
    ) -> None:
        """The PodMonitor's selector matches head and workers; it scrapes their "metrics" port."""
        release = releases[values]
        monitor = release.one("PodMonitor")
        selector = monitor["spec"]["selector"]["matchLabels"]
        pods = ray_pod_labels(release)
        assert pods
        assert all(matches(selector, labels) for labels in pods)
        assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]

    def test_kube_prometheus_stack_label(self, releases: dict[str, Release]) -> None:
        """monitoring.labels reaches the PodMonitor (kube-prometheus-stack selects by release)."""
        assert releases["prod"].one("PodMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    def test_off_in_dev(self, releases: dict[str, Release]) -> None:
        """Dev has no prometheus-operator, so no monitoring objects."""
        assert not {"PodMonitor", "PrometheusRule"} & {obj["kind"] for obj in releases["dev"].objects}


class TestMonitoringFiles:
    """The chart's copies of monitoring/ and the templates built from them."""

    @pytest.mark.parametrize("kind", sorted(SOURCES))
    def test_copies_equal_sources(self, kind: str) -> None:
        """files/<kind>/ holds exactly monitoring's files, byte for byte (see sync-monitoring.sh)."""
        source_dir, pattern = SOURCES[kind]
        sources = sorted(source_dir.glob(pattern))
        copies = sorted((CHART / "files" / kind).glob(pattern))
        if not sources:
            assert not copies, f"files/{kind} has copies of files monitoring/ no longer has"
            pytest.skip(f"monitoring/{source_dir.name} has no {pattern} files yet")
        assert [p.name for p in copies] == [p.name for p in sources], "run deploy/helm/sync-monitoring.sh"
        for source in sources:
            assert filecmp.cmp(source, CHART / "files" / kind / source.name, shallow=False), (
                f"{source.name} differs: run deploy/helm/sync-monitoring.sh"
            )

    def test_sync_script_copies_and_prunes(self, tmp_path: Path) -> None:
        """The script copies monitoring/'s files into the chart and removes copies whose source is gone."""
        repo = tmp_path / "repo"
        shutil.copytree(REPO / "deploy" / "helm", repo / "deploy" / "helm")
        alerts, grafana = repo / "monitoring" / "alerts", repo / "monitoring" / "grafana"
        alerts.mkdir(parents=True)
        grafana.mkdir(parents=True)
        (alerts / "sample.yaml").write_text(SAMPLE_RULES, encoding="utf-8")
        (grafana / "sample.json").write_text(json.dumps(SAMPLE_DASHBOARD), encoding="utf-8")
        files = repo / "deploy" / "helm" / "batch-inference" / "files"
        (files / "alerts" / "stale.yaml").write_text("groups: []\n", encoding="utf-8")
        subprocess.run(
            ["bash", str(repo / "deploy" / "helm" / "sync-monitoring.sh")], check=True, capture_output=True
        )
        assert sorted(p.name for p in (files / "alerts").glob("*.yaml")) == ["sample.yaml"]
        assert (files / "alerts" / "sample.yaml").read_text(encoding="utf-8") == SAMPLE_RULES
        assert json.loads((files / "grafana" / "sample.json").read_text(encoding="utf-8")) == SAMPLE_DASHBOARD

    def test_rules_and_dashboards_render(self, helm: HelmRunner, tmp_path: Path) -> None:
        """Alert and dashboard files render a valid PrometheusRule and labelled dashboard ConfigMaps."""
        chart = tmp_path / "batch-inference"
        shutil.copytree(CHART, chart)
        (chart / "files" / "alerts" / "sample.yaml").write_text(SAMPLE_RULES, encoding="utf-8")
        (chart / "files" / "grafana" / "Sample_Dashboard.json").write_text(
            json.dumps(SAMPLE_DASHBOARD), encoding="utf-8"
        )
        release = helm.install({"monitoring": {"labels": {"release": "kps"}}}, chart=chart)
        for obj in release.objects:
            validate(obj)
        rule = release.one("PrometheusRule")
        assert rule["metadata"]["labels"]["release"] == "kps"
        expected = []
        for path in sorted((chart / "files" / "alerts").glob("*.yaml")):
            expected += yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        assert rule["spec"]["groups"] == expected
        assert "batch-inference.sample" in [g["name"] for g in expected]
        for group in rule["spec"]["groups"]:
            for alert in group["rules"]:
                if "alert" in alert:
                    assert {"summary", "description", "runbook_url"} <= set(alert["annotations"]), alert[
                        "alert"
                    ]
        dashboards = {
            key: cm
            for cm in release.of_kind("ConfigMap")
            if cm["metadata"]["labels"].get("grafana_dashboard")
            for key in cm["data"]
        }
        assert sorted(dashboards) == sorted(p.name for p in (chart / "files" / "grafana").glob("*.json"))
        dashboard = dashboards["Sample_Dashboard.json"]
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dashboard["metadata"]["name"] == "batch-inference-dashboard-sample-dashboard"
        assert json.loads(dashboard["data"]["Sample_Dashboard.json"]) == SAMPLE_DASHBOARD

    def test_nothing_renders_without_files(
        self, helm: HelmRunner, releases: dict[str, Release], tmp_path: Path
    ) -> None:
        """With no synced files the chart renders no empty PrometheusRule or dashboard ConfigMap."""
        assert releases["default"].of_kind("PrometheusRule"), "the chart as synced renders the rules"
        assert len(releases["default"].of_kind("ConfigMap")) > 1, "and dashboard ConfigMaps"
        chart = tmp_path / "batch-inference"
        shutil.copytree(CHART, chart)
        for kind, (_, pattern) in SOURCES.items():
            for synced in (chart / "files" / kind).glob(pattern):
                synced.unlink()
        release = helm.install(chart=chart)
        assert not release.of_kind("PrometheusRule")
        assert [cm["metadata"]["name"] for cm in release.of_kind("ConfigMap")] == ["batch-inference-config"]
