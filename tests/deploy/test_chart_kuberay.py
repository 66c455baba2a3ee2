"""What KubeRay 1.7 makes of the rendered RayJob: how it submits, what it accepts, what it deletes.

``kuberay_refusals`` ports the rules of KubeRay 1.7's validation (ray-operator/controllers/ray/
utils/validation.go: ValidateRayJobMetadata, ValidateRayJobSpec, ValidateRayClusterSpec) that
the chart's settings touch; a RayJob that breaks one ends ValidationFailed before any pod starts.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_manifests import (
    CHART,
    ENVIRONMENTS,
    KUBERAY_DIR,
    HelmRefused,
    HelmRunner,
    Release,
    env_of,
    rayjob_spec_of,
    scheduled_rayjob,
)

ALL_VALUES = ["default", *ENVIRONMENTS]
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_RAYJOB_NAME = 47  # utils.MaxRayJobNameLength
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
Obj = dict[str, Any]
STOP_JOBS_SCRIPT = CHART / "files" / "stop-ray-jobs.py"
KUBERAY_POLL_S = 3  # RayJobDefaultRequeueDuration: how often the operator reads a running job's status


def kuberay_refusals(rayjob: Obj) -> list[str]:
    """Why KubeRay 1.7 would set this RayJob ValidationFailed (empty: it accepts it)."""
    name = rayjob["metadata"]["name"]
    errors = []
    if len(name) > MAX_RAYJOB_NAME or not DNS_1035.match(name):
        errors.append(f"name {name!r}: at most {MAX_RAYJOB_NAME} characters, a DNS-1035 label")
    return errors + _spec_refusals(rayjob["spec"]) + _cluster_refusals(rayjob["spec"]["rayClusterSpec"])


def _spec_refusals(spec: Obj) -> list[str]:
    """ValidateRayJobSpec: submission mode, deadlines, deletion strategy."""
    errors = []
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        errors.append(f"submissionMode {mode}")
    if mode == "SidecarMode" and ("submitterPodTemplate" in spec or "submitterConfig" in spec):
        errors.append("SidecarMode doesn't support SubmitterPodTemplate or SubmitterConfig")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append("BackoffLimit is incompatible with InteractiveMode")
    errors += [
        f"{key} must be a positive integer"
        for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds")
        if key in spec and spec[key] <= 0
    ]
    rules = (spec.get("deletionStrategy") or {}).get("deletionRules") or []
    if rules and spec.get("shutdownAfterJobFinishes"):
        errors.append("shutdownAfterJobFinishes and deletionStrategy.deletionRules are mutually exclusive")
    if spec["rayClusterSpec"].get("enableInTreeAutoscaling") and any(
        rule["policy"] == "DeleteWorkers" for rule in rules
    ):
        errors.append("DeleteWorkers not supported with autoscaling enabled")
    return errors


def _cluster_refusals(cluster: Obj) -> list[str]:
    """ValidateRayClusterSpec: autoscaler version, worker groups, restart policies."""
    errors = []
    autoscaling = cluster.get("enableInTreeAutoscaling") is True
    if (cluster.get("authOptions") or {}).get("mode") == "k8s":
        errors.append("K8s token auth mode is not supported for RayJob")
    v2 = autoscaling and (cluster.get("autoscalerOptions") or {}).get("version") == "v2"
    head_pod = cluster["headGroupSpec"]["template"]["spec"]
    if v2 and any(e["name"] == "RAY_enable_autoscaler_v2" for e in head_pod["containers"][0].get("env", [])):
        errors.append("both autoscalerOptions.version and RAY_enable_autoscaler_v2 are set")
    for group in cluster["workerGroupSpecs"]:
        name = group["groupName"]
        if not autoscaling and ("minReplicas" not in group or "maxReplicas" not in group):
            errors.append(f"worker group {name} must set minReplicas and maxReplicas")
        if group.get("minReplicas", 0) > group.get("maxReplicas", 2**31):
            errors.append(f"worker group {name}: minReplicas > maxReplicas")
        if "idleTimeoutSeconds" in group and not v2:
            errors.append(f"worker group {name}: idleTimeoutSeconds needs autoscaler v2")
    pods = [head_pod, *(group["template"]["spec"] for group in cluster["workerGroupSpecs"])]
    if v2 and any(pod.get("restartPolicy", "Never") != "Never" for pod in pods):
        errors.append("restartPolicy must be Never or unset with autoscaler v2")
    return errors


def rayjobs(release: Release) -> list[Obj]:
    """Every RayJob a release makes: the one-off, or the one each scheduled run creates."""
    found = list(release.of_kind("RayJob"))
    found += [scheduled_rayjob(cron) for cron in release.of_kind("CronWorkflow")]
    assert found, "the release renders no RayJob"
    return found


class TestKubeRayAccepts:
    """KubeRay 1.7 accepts every RayJob the chart renders, per-group idle timeouts included."""

    def test_the_port_of_its_rules_refuses(self) -> None:
        """The rules above do refuse what KubeRay refuses (the check is not vacuous)."""
        group = {
            "groupName": "gpu",
            "minReplicas": 0,
            "maxReplicas": 1,
            "idleTimeoutSeconds": 30,
            "template": {"spec": {"containers": [{"name": "ray-worker"}]}},
        }
        rayjob = {
            "metadata": {"name": "x" * 48},
            "spec": {
                "submissionMode": "SidecarMode",
                "submitterConfig": {},
                "rayClusterSpec": {
                    "enableInTreeAutoscaling": True,
                    "headGroupSpec": {"template": {"spec": {"containers": [{"name": "ray-head"}]}}},
                    "workerGroupSpecs": [group],
                },
            },
        }
        assert len(kuberay_refusals(rayjob)) == 3

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_every_environment(self, releases: dict[str, Release], scheduled: Release, values: str) -> None:
        """The RayJob of each environment (and a scheduled run's) passes KubeRay's validation."""
        for rayjob in rayjobs(releases[values]) + rayjobs(scheduled):
            assert kuberay_refusals(rayjob) == []

    def test_a_group_idle_timeout(self, helm: HelmRunner) -> None:
        """A worker group's own idleTimeoutSeconds renders, and KubeRay accepts it (autoscaler v2)."""
        release = helm.install({"workerGroups": {"cpu": {"idleTimeoutSeconds": 120}}})
        (rayjob,) = rayjobs(release)
        groups = {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
        assert groups["cpu"]["idleTimeoutSeconds"] == 120
        assert kuberay_refusals(rayjob) == []


class TestSubmission:
    """The job is submitted without a log stream that can fail it; its log still reaches kubectl logs."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_no_submitter_pod_follows_the_log(
        self, releases: dict[str, Release], scheduled: Release, values: str
    ) -> None:
        """HTTPMode: the operator submits through the Jobs API and polls it; no submitter pod or Job."""
        for release in (releases[values], scheduled):
            for obj in release.objects:
                if obj["kind"] in ("RayJob", "CronWorkflow"):
                    spec = rayjob_spec_of(obj)
                    assert spec["submissionMode"] == "HTTPMode"
                    assert not {"submitterPodTemplate", "submitterConfig"} & set(spec)

    def test_driver_log_container_prints_the_driver_log(
        self, releases: dict[str, Release], tmp_path: Path
    ) -> None:
        """The head's driver-log script waits for Ray's job-driver log and prints it from the first line."""
        head = rayjob_spec_of(releases["default"].one("RayJob"))["rayClusterSpec"]["headGroupSpec"]
        (container,) = [c for c in head["template"]["spec"]["containers"] if c["name"] == "driver-log"]
        assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp/ray"]
        command, (script,) = container["command"], container["args"]
        logs = tmp_path / "session_latest" / "logs"
        process = subprocess.Popen(  # the container's own command, over a copy of Ray's layout
            [*command, script.replace("/tmp/ray/", f"{tmp_path}/")], stdout=subprocess.PIPE, text=True
        )
        try:
            time.sleep(0.5)  # the script is already waiting when Ray creates the log
            logs.mkdir(parents=True)
            (logs / "job-driver-batch-inference-1-abcde.log").write_text('{"event": "run starting"}\n')
            assert process.stdout is not None
            assert process.stdout.readline() == '{"event": "run starting"}\n'
        finally:
            process.kill()
            process.wait(timeout=10)


class TestNoIdleGpus:
    """When the job ends its GPU workers go; the head stays for the TTL with the logs."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_gpu_groups_scale_to_zero_when_idle(
        self, releases: dict[str, Release], scheduled: Release, values: str
    ) -> None:
        """Autoscaler v2; GPU groups at minReplicas 0, short idle timeout; the cluster goes after the TTL."""
        for rayjob in rayjobs(releases[values]) + rayjobs(scheduled):
            spec = rayjob["spec"]
            cluster = spec["rayClusterSpec"]
            assert cluster["autoscalerOptions"]["version"] == "v2"
            gpu_groups = [g for g in cluster["workerGroupSpecs"] if "num-gpus" in g["rayStartParams"]]
            assert gpu_groups
            for group in gpu_groups:
                assert group["minReplicas"] == 0, group["groupName"]
                idle = group.get("idleTimeoutSeconds", cluster["autoscalerOptions"]["idleTimeoutSeconds"])
                assert 0 < idle <= 60
            assert spec["shutdownAfterJobFinishes"] is True
            assert spec["ttlSecondsAfterFinished"] > 0


def head_container(rayjob: Obj) -> Obj:
    """The ray-head container of a RayJob's head pod template."""
    pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "ray-head"]
    return container


@dataclass(frozen=True)
class StopTimings:
    """The stop's nested bounds, in seconds from the preStop hook's SIGTERM."""

    drain: float  # the driver's drain (config resources.stop_grace_s)
    sigkill: float  # the hook SIGKILLs what is left of the job (as Ray does after RAY_JOB_STOP_WAIT_TIME_S)
    wait: float  # the hook gives up on the jobs ending
    hold: float  # the hook keeps the head up once they have ended
    grace: int  # the head pod's terminationGracePeriodSeconds


def stop_timings(release: Release, rayjob: Obj) -> StopTimings:
    """The stop's bounds as rendered: the config, the head's environment and preStop argv, the pod."""
    config = yaml.safe_load(release.pipeline_config()["data"]["config.yaml"])
    container = head_container(rayjob)
    *_, sigkill, wait, hold = container["lifecycle"]["preStop"]["exec"]["command"]
    assert int(env_of(container)["RAY_JOB_STOP_WAIT_TIME_S"]["value"]) == float(sigkill)  # `ray job stop`'s
    pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    return StopTimings(
        config["resources"]["stop_grace_s"],
        float(sigkill),
        float(wait),
        float(hold),
        pod["terminationGracePeriodSeconds"],
    )


class TestPodDeletionReachesTheDriver:
    """A deleted head pod SIGTERMs its jobs' drivers first: each drains with Ray up, its job ends FAILED."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_the_head_signals_its_drivers_before_it_stops(
        self, releases: dict[str, Release], scheduled: Release, values: str
    ) -> None:
        """ray-head's preStop runs the chart's stop-ray-jobs.py against the local dashboard; bounds nest."""
        for release in (releases[values], scheduled):
            for rayjob in rayjobs(release):
                command = head_container(rayjob)["lifecycle"]["preStop"]["exec"]["command"]
                script = STOP_JOBS_SCRIPT.read_text(encoding="utf-8")
                assert command[:4] == ["python", "-c", script, "http://127.0.0.1:8265"]
                timings = stop_timings(release, rayjob)
                assert timings.drain < timings.sigkill < timings.wait
                assert timings.wait + timings.hold < timings.grace
                assert timings.hold > 3 * KUBERAY_POLL_S  # three of the operator's status polls

    def test_the_bounds_follow_stop_grace_seconds(self, helm: HelmRunner) -> None:
        """stopGraceSeconds moves every bound: the drain, the SIGKILL, the hook's wait, the grace period."""
        release = helm.install({"stopGraceSeconds": 600})
        (rayjob,) = rayjobs(release)
        timings = stop_timings(release, rayjob)
        assert timings.drain == 600
        assert timings.drain < timings.sigkill < timings.wait < timings.wait + timings.hold < timings.grace
        for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
            assert group["template"]["spec"]["terminationGracePeriodSeconds"] == timings.grace

    @pytest.mark.parametrize(
        ("values", "named"),
        [
            ({"extraEnv": {"RAY_JOB_STOP_WAIT_TIME_S": "3"}}, r"extraEnv\.RAY_JOB_STOP_WAIT_TIME_S"),
            (
                {"rayJob": {"runtimeEnv": {"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "3"}}}},
                r"rayJob\.runtimeEnv\.env_vars\.RAY_JOB_STOP_WAIT_TIME_S",
            ),
        ],
        ids=["extraEnv", "runtimeEnv"],
    )
    def test_a_stop_wait_set_elsewhere_fails_to_render(
        self, helm: HelmRunner, values: Obj, named: str
    ) -> None:
        """RAY_JOB_STOP_WAIT_TIME_S is stopGraceSeconds + 20: set elsewhere, helm install stops naming it."""
        with pytest.raises(HelmRefused, match=named):
            helm.install(values)


def test_raycronjob_says_it_needs_the_feature_gate() -> None:
    """deploy/kuberay offers the RayCronJob with the alpha feature gate it needs, in file and README."""
    gate = "RayCronJob=true"
    assert gate in (KUBERAY_DIR / "raycronjob.yaml").read_text(encoding="utf-8")
    assert gate in (KUBERAY_DIR / "README.md").read_text(encoding="utf-8")
