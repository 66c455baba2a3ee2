"""PodMonitor, and the alert rules and dashboards synced from monitoring/.

The NetworkPolicies are tested in test_chart_network.py.
"""

from __future__ import annotations

import filecmp
import json
import re
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
            groups = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
            # The defaults push to no Pushgateway: the groups reading pushed series are left out.
            expected += [group for group in groups if not group["name"].endswith(".pushed")]
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


def rule_exprs(release: Release) -> dict[str, str]:
    """Alert name -> expression, as the release's PrometheusRule renders them."""
    return {
        rule["alert"]: rule["expr"]
        for group in release.one("PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


class TestRulesForThisRelease:
    """The PrometheusRule holds what can be evaluated, scoped to this release."""

    def test_pushed_rules_only_with_a_pushgateway(self, releases: dict[str, Release]) -> None:
        """Without metrics.pushgateway_url no rule reads a pushed series (none fires forever on absent())."""
        default = rule_exprs(releases["default"])
        assert default
        assert not [name for name, expr in default.items() if "pipeline_job_" in expr and "ray_" not in expr]
        assert not [name for name, expr in default.items() if "absent(" in expr]
        sources = {
            rule["alert"]
            for path in (REPO / "monitoring" / "alerts").glob("*.yaml")
            for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
            for rule in group["rules"]
        }
        for env in ("staging", "prod"):
            assert set(rule_exprs(releases[env])) == sources

    def test_rules_name_this_release(self, helm: HelmRunner) -> None:
        """Another release in another namespace: its namespace, its names' prefix, its release label."""
        release = helm.install(
            {"schedule": {"enabled": True}, "rayJob": {"enabled": False}}, release="nightly-x", namespace="ml"
        )
        exprs = rule_exprs(release)
        spilling = exprs["PipelineObjectStoreSpilling"]
        assert 'batch_inference_release="nightly-x"' in spilling
        scoped = {name: expr for name, expr in exprs.items() if "kuberay_" in expr or "kube_pod_" in expr}
        assert set(scoped) == {
            "PipelineRayJobInvalid",
            "PipelineImagePullFailing",
            "PipelinePodsUnschedulable",
        }
        rayjob = f"{release.one('CronWorkflow')['metadata']['name']}-1767225600-x7k2q"  # a run's RayJob
        for name, expr in scoped.items():
            assert 'namespace="ml"' in expr, name
            (pattern,) = re.findall(r'(?:name|pod)=~"([^"]+)"', expr)
            for ours in (rayjob, f"{rayjob}-abcde-head-fghij", f"{rayjob}-abcde-gpu-worker-klmno"):
                assert re.fullmatch(pattern, ours), (name, pattern, ours)
            assert not re.fullmatch(pattern, "batch-inference-1767225600-x7k2q"), (name, pattern)

    def test_long_release_names_still_match(self, helm: HelmRunner) -> None:
        """With a name cut to fit KubeRay's limits, the one-off RayJob still matches the rules' prefix."""
        release = helm.install(release="a-long-release-name-for-nightly-batch-classification")
        (pattern,) = re.findall(r'name=~"([^"]+)"', rule_exprs(release)["PipelineRayJobInvalid"])
        assert re.fullmatch(pattern, release.one("RayJob")["metadata"]["name"])

    def test_pod_monitor_labels_the_release(self, releases: dict[str, Release]) -> None:
        """The PodMonitor copies the pods' instance label into batch_inference_release."""
        relabelings = releases["prod"].one("PodMonitor")["spec"]["podMetricsEndpoints"][0]["relabelings"]
        assert {
            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "targetLabel": "batch_inference_release",
        } in relabelings
