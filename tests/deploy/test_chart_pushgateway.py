"""The chart's half of Pushgateway authentication (issue #27.3), and who may push at all.

pushgatewayAuth.existingSecret mounts the Secret on the head (the driver's pod) and writes the
files' paths, never their content, into the config; docs/deploy.md's NetworkPolicy for the
Pushgateway lets only this release's head (and Prometheus) reach it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_manifests import (
    REPO,
    HelmRefused,
    HelmRunner,
    Release,
    deep_merge,
    environment_values,
    rayjob_spec_of,
    validate,
)
from deploy_netpol import NetworkPolicies, Pod, head_pod, worker_pods

from pipeline.config import load_config

MOUNT = "/etc/pipeline-secrets/pushgateway"


def with_auth(helm: HelmRunner, kind: str) -> Release:
    """Prod's values with a Pushgateway credentials Secret of this kind."""
    values = deep_merge(
        environment_values("prod"), {"pushgatewayAuth": {"existingSecret": "pushgw-creds", "type": kind}}
    )
    release = helm.install(values)
    for obj in release.objects:
        validate(obj)
    return release


def pods(release: Release) -> dict[str, dict[str, Any]]:
    """head / <group> -> pod spec of the release's RayJob (a scheduled run's)."""
    (cron,) = release.of_kind("CronWorkflow")
    cluster = rayjob_spec_of(cron)["rayClusterSpec"]
    found = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    found |= {g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    return found


class TestCredentialsSecret:
    """The Secret reaches the driver as files; the config names the files."""

    @pytest.mark.parametrize(("kind", "keys"), [("basic", ["username", "password"]), ("bearer", ["token"])])
    def test_head_mounts_the_secret_and_the_config_names_its_files(
        self, helm: HelmRunner, kind: str, keys: list[str], tmp_path: Path
    ) -> None:
        """ray-head mounts the Secret read-only; the ConfigMap's config points at its files and loads."""
        release = with_auth(helm, kind)
        head = pods(release)["head"]
        volumes = {v["name"]: v for v in head["volumes"]}
        (ray_head,) = [c for c in head["containers"] if c["name"] == "ray-head"]
        (mount,) = [m for m in ray_head["volumeMounts"] if m["mountPath"] == MOUNT]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "pushgw-creds"
        assert [item["key"] for item in secret["items"]] == keys
        config_text = release.pipeline_config()["data"]["config.yaml"]
        metrics = yaml.safe_load(config_text)["metrics"]
        assert {metrics[f"pushgateway_{key}_file"] for key in keys} == {f"{MOUNT}/{key}" for key in keys}
        (tmp_path / "config.yaml").write_text(config_text, encoding="utf-8")
        assert load_config(tmp_path / "config.yaml", environ={}).metrics.pushgateway_url

    def test_only_the_driver_container_mounts_it(self, helm: HelmRunner) -> None:
        """Workers, the driver-log container and the autoscaler do not get the Secret."""
        release = with_auth(helm, "basic")
        for name, pod in pods(release).items():
            for container in pod["containers"]:
                mounted = [m["mountPath"] for m in container["volumeMounts"]]
                assert (MOUNT in mounted) == (name == "head" and container["name"] == "ray-head")
        (cron,) = release.of_kind("CronWorkflow")
        autoscaler = rayjob_spec_of(cron)["rayClusterSpec"]["autoscalerOptions"]
        assert MOUNT not in [m["mountPath"] for m in autoscaler["volumeMounts"]]

    def test_credentials_need_a_pushgateway(self, helm: HelmRunner) -> None:
        """A credentials Secret without config.metrics.pushgateway_url fails to render, naming both keys."""
        with pytest.raises(
            HelmRefused, match=r"pushgatewayAuth\.existingSecret.*config\.metrics\.pushgateway_url"
        ):
            helm.install({"pushgatewayAuth": {"existingSecret": "pushgw-creds"}})

    def test_no_credentials_by_default(self, releases: dict[str, Release]) -> None:
        """Without the Secret nothing is mounted and the config names no credential file."""
        for release in releases.values():
            metrics = yaml.safe_load(release.pipeline_config()["data"]["config.yaml"]).get("metrics") or {}
            assert not {key for key in metrics if key.endswith("_file")}
            assert MOUNT not in release.result["manifest"]


def documented_pushgateway_policy() -> dict[str, Any]:
    """The NetworkPolicy docs/deploy.md gives for the Pushgateway's namespace."""
    section = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8").split("### Who may push")[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block, "docs/deploy.md has no NetworkPolicy under 'Who may push'"
    policy: dict[str, Any] = yaml.safe_load(block.group(1))
    return policy


class TestWhoMayPush:
    """The documented Pushgateway NetworkPolicy admits this release's head and Prometheus only."""

    def test_documented_policy(self, releases: dict[str, Release]) -> None:
        """Head pods of the release push, Prometheus scrapes; workers and other pods are refused."""
        release = releases["prod"]
        policy = documented_pushgateway_policy()
        validate(policy)
        namespace = policy["metadata"]["namespace"]
        policies = NetworkPolicies([policy], namespace=namespace)
        pushgateway = Pod(
            {"app.kubernetes.io/name": "prometheus-pushgateway"}, namespace=namespace, ip="10.244.5.9"
        )
        prometheus = Pod({"app.kubernetes.io/name": "prometheus"}, namespace=namespace, ip="10.244.5.5")
        assert policies.ingress_allows(head_pod(release), pushgateway, 9091)
        assert policies.ingress_allows(prometheus, pushgateway, 9091)
        for intruder in (
            *worker_pods(release),
            Pod({"app": "anything"}, ip="10.244.9.9"),
            Pod(head_pod(release).labels, namespace="tenant-b", ip="10.244.9.10"),
        ):
            assert not policies.ingress_allows(intruder, pushgateway, 9091), intruder.labels
