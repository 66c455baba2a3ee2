"""Issue #7, chart part: hardened pods, token auth, no exposed dashboard, no credentials in values."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from deploy_manifests import (
    CHART,
    ENVIRONMENTS,
    HelmRefused,
    HelmRunner,
    Release,
    env_of,
    pod_specs,
    rayjob_spec_of,
    scheduled_rayjob,
    validate_builtin,
)

ALL_VALUES = ["default", *ENVIRONMENTS]
RAY_CONTAINERS = {"ray-head", "ray-worker"}
FAKE_SECRET_VALUE = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # noqa: S105 - AWS's documented example key
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "40-character secret key": re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCP service-account key": re.compile(r'"private_key_id"'),
    "bearer token": re.compile(r"(?i)bearer\s+[a-z0-9._-]{16,}"),
}


@pytest.fixture(scope="module")
def with_credentials_secret(helm: HelmRunner) -> Release:
    """The chart with S3 keys taken from a Secret reference, as the dev environment does."""
    return helm.install({"storage": {"credentialsSecret": "s3-keys"}, "schedule": {"enabled": True}})


def all_releases(releases: dict[str, Release], scheduled: Release, secret: Release) -> list[Release]:
    """Every rendering the tests check."""
    return [*releases.values(), scheduled, secret]


def all_pod_specs(release: Release) -> list[dict[str, Any]]:
    """Every pod spec of a release, including those inside the RayJob a scheduled run creates."""
    specs = []
    for obj in release.objects:
        specs += pod_specs(scheduled_rayjob(obj) if obj["kind"] == "CronWorkflow" else obj)
    return specs


def all_containers(release: Release) -> list[dict[str, Any]]:
    """Every container of every pod spec."""
    return [c for pod in all_pod_specs(release) for c in pod["containers"] + pod.get("initContainers", [])]


def workflow_step_patches(release: Release) -> list[dict[str, Any]]:
    """The podSpecPatch of every scheduled Workflow template, parsed (Argo merges it into the step's pod)."""
    patches = []
    for cron in release.of_kind("CronWorkflow"):
        for template in cron["spec"]["workflowSpec"]["templates"]:
            assert "podSpecPatch" in template, f"template {template['name']} has no podSpecPatch"
            patches.append(yaml.safe_load(template["podSpecPatch"]))
    return patches


def workflow_step_containers(release: Release) -> list[dict[str, Any]]:
    """The settings the chart pins on the scheduled Workflow's step container ("main", argoexec)."""
    return [container for patch in workflow_step_patches(release) for container in patch["containers"]]


def autoscaler_options(release: Release) -> list[dict[str, Any]]:
    """The autoscaler sidecar settings of every RayJob (KubeRay builds that container from them)."""
    return [
        rayjob_spec_of(obj)["rayClusterSpec"]["autoscalerOptions"]
        for obj in release.objects
        if obj["kind"] in ("RayJob", "CronWorkflow")
    ]


def assert_hardened_container(security: dict[str, Any], where: str) -> None:
    """The container-level settings issue #7 asks for."""
    assert security.get("allowPrivilegeEscalation") is False, where
    assert security.get("readOnlyRootFilesystem") is True, where
    assert security.get("runAsNonRoot") is True, where
    assert "ALL" in security.get("capabilities", {}).get("drop", []), where
    assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    assert not security.get("privileged", False), where
    assert not security.get("capabilities", {}).get("add"), where


class TestHardening:
    """Every pod and container runs non-root, read-only, without privileges, under RuntimeDefault seccomp."""

    def test_every_pod_is_non_root(self, releases, scheduled, with_credentials_secret) -> None:
        """Pod security context: runAsNonRoot, a non-zero UID, RuntimeDefault seccomp; no host namespaces."""
        checked = 0
        for release in all_releases(releases, scheduled, with_credentials_secret):
            for pod in all_pod_specs(release):
                security = pod["securityContext"]
                assert security["runAsNonRoot"] is True
                assert security["runAsUser"] > 0
                assert security["seccompProfile"]["type"] == "RuntimeDefault"
                assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
                checked += 1
            for cron in release.of_kind("CronWorkflow"):
                workflow = cron["spec"]["workflowSpec"]
                security = workflow["securityContext"]
                assert security["runAsNonRoot"] is True
                assert security["runAsUser"] > 0
                assert security["seccompProfile"]["type"] == "RuntimeDefault"
                assert not workflow.get("hostNetwork")
                checked += 1
        assert checked >= 4 * 3  # head and 2 worker groups in each RayJob

    def test_every_container_is_hardened(self, releases, scheduled, with_credentials_secret) -> None:
        """Container security context on the head, its driver-log container, workers and the autoscaler."""
        for release in all_releases(releases, scheduled, with_credentials_secret):
            names = set()
            for container in all_containers(release):
                assert_hardened_container(container["securityContext"], container["name"])
                names.add(container["name"])
            assert names == {"ray-head", "driver-log", "ray-worker"}
            for options in autoscaler_options(release):
                assert_hardened_container(options["securityContext"], "autoscaler")
            steps = workflow_step_containers(release)
            assert [c["name"] for c in steps] == ["main"] * len(release.of_kind("CronWorkflow"))
            for container in steps:
                assert_hardened_container(container["securityContext"], "workflow step")

    def test_workflow_step_is_hardened(self, scheduled: Release) -> None:
        """The scheduled Workflow's step container ("main", argoexec) gets the Ray containers' hardening."""
        (container,) = workflow_step_containers(scheduled)
        assert container["name"] == "main"
        assert_hardened_container(container["securityContext"], "workflow step")
        ray_head = next(c for c in all_containers(scheduled) if c["name"] == "ray-head")
        assert container["securityContext"] == ray_head["securityContext"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])

    def test_workflow_step_patch_is_a_valid_pod_spec(self, scheduled: Release) -> None:
        """Argo refuses a podSpecPatch that is not a PodSpec: it validates against Kubernetes' schema."""
        for patch in workflow_step_patches(scheduled):
            assert set(patch) == {"containers"}
            validate_builtin(
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "t"},
                    "template": {"spec": patch},
                }
            )

    def test_workflow_step_resources_follow_values(self, helm: HelmRunner) -> None:
        """schedule.resources sets the step container's requests and limits."""
        resources = {"requests": {"cpu": "20m", "memory": "96Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
        release = helm.install(
            {"schedule": {"enabled": True, "resources": resources}, "rayJob": {"enabled": False}}
        )
        (container,) = workflow_step_containers(release)
        assert container["resources"] == resources

    def test_every_container_has_requests_and_limits(
        self, releases, scheduled, with_credentials_secret
    ) -> None:
        """CPU and memory requests and limits on every container, the autoscaler's included."""
        for release in all_releases(releases, scheduled, with_credentials_secret):
            resources = [c["resources"] for c in all_containers(release)]
            resources += [options["resources"] for options in autoscaler_options(release)]
            resources += [c["resources"] for c in workflow_step_containers(release)]
            for resource in resources:
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resource[kind])

    def test_writable_paths_are_empty_dirs(self, releases, scheduled) -> None:
        """With a read-only root, /tmp (and /tmp/ray on Ray nodes) are emptyDirs with size limits."""
        for release in [*releases.values(), scheduled]:
            for pod in all_pod_specs(release):
                volumes = {v["name"]: v for v in pod["volumes"]}
                for container in pod["containers"]:
                    if container["name"] == "driver-log":  # reads the Ray log volume, writes nothing
                        assert all(m["readOnly"] for m in container["volumeMounts"])
                        continue
                    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                    wanted = ["/tmp", "/tmp/ray"] if container["name"] in RAY_CONTAINERS else ["/tmp"]
                    for path in wanted:
                        assert volumes[mounts[path]]["emptyDir"]["sizeLimit"]
                    assert env_of(container)["HOME"]["value"].startswith("/tmp")

    def test_only_the_autoscaler_gets_an_api_token(self, releases, scheduled) -> None:
        """No pod mounts the ServiceAccount token; on the head only the autoscaler mounts a projected one."""
        for release in [*releases.values(), scheduled]:
            for obj in release.objects:
                if obj["kind"] == "ServiceAccount" and not obj["metadata"]["name"].endswith("-workflow"):
                    assert obj["automountServiceAccountToken"] is False
                if obj["kind"] not in ("RayJob", "CronWorkflow"):
                    continue
                cluster = rayjob_spec_of(obj)["rayClusterSpec"]
                for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
                    pod = group["template"]["spec"]
                    assert pod["automountServiceAccountToken"] is False
                    token_volumes = {
                        volume["name"]
                        for volume in pod["volumes"]
                        if any(
                            "serviceAccountToken" in source
                            for source in volume.get("projected", {}).get("sources", [])
                        )
                    }
                    for container in pod["containers"]:
                        mounted = {mount["name"] for mount in container["volumeMounts"]}
                        assert not mounted & token_volumes, f"{container['name']} mounts an API token"
                head_volumes = {v["name"]: v for v in cluster["headGroupSpec"]["template"]["spec"]["volumes"]}
                (mount,) = [
                    m
                    for m in cluster["autoscalerOptions"]["volumeMounts"]
                    if m["name"] in head_volumes and "projected" in head_volumes[m["name"]]
                ]
                assert mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
                assert mount["readOnly"] is True
                sources = head_volumes[mount["name"]]["projected"]["sources"]
                assert [next(iter(source)) for source in sources] == [
                    "serviceAccountToken",
                    "configMap",
                    "downwardAPI",
                ]
                assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"


class TestRayAuthentication:
    """Ray token authentication is on, with the token read from an existing Secret."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_token_auth_on_every_ray_process(self, releases: dict[str, Release], values: str) -> None:
        """RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from a secretKeyRef: every container and the autoscaler."""
        release = releases[values]
        envs = [env_of(c) for c in all_containers(release) if c["name"] in RAY_CONTAINERS]
        envs += [{e["name"]: e for e in options["env"]} for options in autoscaler_options(release)]
        assert envs
        for env in envs:
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "batch-inference-ray-token", "key": "auth_token"}
            assert "value" not in env["RAY_AUTH_TOKEN"]
        for obj in release.of_kind("RayJob"):
            assert obj["spec"]["rayClusterSpec"]["authOptions"] == {
                "mode": "token",
                "secretName": "batch-inference-ray-token",
            }

    def test_token_value_cannot_be_given(self, helm: HelmRunner) -> None:
        """There is no value for the token itself: rayAuth.token is refused by the schema."""
        with pytest.raises(HelmRefused, match="token"):
            helm.install({"rayAuth": {"token": "s3cr3t-t0ken"}})


class TestExposure:
    """The Ray dashboard stays inside the cluster."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_dashboard_is_cluster_internal(self, releases: dict[str, Release], values: str) -> None:
        """The head service is ClusterIP, no ingress is enabled, the chart renders no Service/Ingress."""
        release = releases[values]
        assert not release.of_kind("Ingress")
        assert not release.of_kind("Service")
        for obj in release.objects:
            if obj["kind"] in ("RayJob", "CronWorkflow"):
                head = rayjob_spec_of(obj)["rayClusterSpec"]["headGroupSpec"]
                assert head["serviceType"] == "ClusterIP"
                assert not head.get("enableIngress", False)


class TestCredentials:
    """No credential value is ever rendered; storage keys come from a Secret reference or cloud identity."""

    def test_storage_secret_is_a_reference(self, with_credentials_secret: Release) -> None:
        """credentialsSecret becomes envFrom.secretRef on every Ray container, never on driver-log."""
        for container in all_containers(with_credentials_secret):
            refs = [source["secretRef"]["name"] for source in container.get("envFrom", [])]
            assert refs == (["s3-keys"] if container["name"] in RAY_CONTAINERS else [])

    def test_no_credential_values_rendered(self, releases, scheduled, with_credentials_secret) -> None:
        """No rendered object holds a key, token or password value (by pattern, and env by name)."""
        for release in all_releases(releases, scheduled, with_credentials_secret):
            text = release.result["manifest"] + json.dumps(release.result.get("config", {}))
            for name, pattern in CREDENTIAL_PATTERNS.items():
                assert not pattern.search(text), f"{name} found in the rendered chart"
            for container in all_containers(release):
                for entry in container.get("env", []):
                    if re.search(r"(?i)secret|token|passw|access_key|credential", entry["name"]):
                        assert "value" not in entry, entry["name"]
            assert not release.of_kind("Secret")

    def test_scanner_finds_a_planted_key(self) -> None:
        """The patterns above do catch a key that is in the text (the scan is not vacuous)."""
        text = yaml.safe_dump(
            {
                "env": [
                    {"name": "X", "value": FAKE_SECRET_VALUE},
                    {"name": "Y", "value": "AKIAIOSFODNN7EXAMPLE"},
                ]
            }
        )
        assert CREDENTIAL_PATTERNS["40-character secret key"].search(text)
        assert CREDENTIAL_PATTERNS["AWS access key id"].search(text)

    @pytest.mark.parametrize(
        "name", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "GITHUB_TOKEN", "DB_PASSWORD"]
    )
    def test_credentials_in_extra_env_are_refused(self, helm: HelmRunner, name: str) -> None:
        """extraEnv refuses names that look like credentials: they belong in storage.credentialsSecret."""
        with pytest.raises(HelmRefused):
            helm.install({"extraEnv": {name: FAKE_SECRET_VALUE}})


class TestRBAC:
    """The job needs no Kubernetes API; only the scheduled Workflow's executor gets a narrow Role."""

    @pytest.mark.parametrize("values", ["default", "dev"])
    def test_no_rbac_without_schedule(self, releases: dict[str, Release], values: str) -> None:
        """Without the schedule the chart binds no Role: the autoscaler's comes from KubeRay."""
        kinds = {obj["kind"] for obj in releases[values].objects}
        assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}

    def test_workflow_role_only_creates_and_gets_rayjobs(self, scheduled: Release) -> None:
        """Exact verbs per resource: create+get RayJobs (create the run, poll it), create+patch task results.

        argoexec creates the RayJob once and polls it with GET (no list/watch); the RayJob goes with
        its owner Workflow through the garbage collector (no delete).
        """
        role = scheduled.one("Role")
        rules = [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]]
        assert sorted(rules) == sorted(
            [
                (("argoproj.io",), ("workflowtaskresults",), ("create", "patch")),
                (("ray.io",), ("rayjobs",), ("create", "get")),
            ]
        )
        assert not any("resourceNames" in r or "nonResourceURLs" in r for r in role["rules"])
        binding = scheduled.one("RoleBinding")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        workflow_sa = scheduled.one("CronWorkflow")["spec"]["workflowSpec"]["serviceAccountName"]
        assert [s["name"] for s in binding["subjects"]] == [workflow_sa]
        assert not scheduled.of_kind("ClusterRole")

    def test_every_verb_is_explained_beside_its_rule(self) -> None:
        """templates/role.yaml names each verb a rule grants in the comment right above that rule."""
        lines = (CHART / "templates" / "role.yaml").read_text(encoding="utf-8").splitlines()
        rules = [n for n, line in enumerate(lines) if line.lstrip().startswith("- apiGroups:")]
        assert len(rules) == 2
        for start in rules:
            comment = []
            above = start - 1
            while lines[above].lstrip().startswith("#"):
                comment.insert(0, lines[above])
                above -= 1
            (verbs_line,) = [line for line in lines[start : start + 4] if "verbs:" in line]
            verbs = re.findall(r'"([a-z]+)"', verbs_line)
            assert verbs
            for verb in verbs:
                assert re.search(rf"\b{verb}\b", " ".join(comment)), f"{verb} is not explained above its rule"
