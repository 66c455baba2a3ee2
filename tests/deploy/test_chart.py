"""The Helm chart, rendered and installed with the real Helm library into a fake API server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_manifests import (
    CHART,
    ENVIRONMENTS,
    HelmRefused,
    HelmRunner,
    Release,
    environment_values,
    load_script,
    rayjob_spec_of,
    scheduled_rayjob,
    validate,
)
from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources

from pipeline.config import load_config

ALL_VALUES = ["default", *ENVIRONMENTS]
RAY_CONTAINERS = ("ray-head", "ray-worker")


def rayjob_specs(release: Release) -> list[dict[str, Any]]:
    """Every RayJob spec a release renders, the one the CronWorkflow creates included."""
    return [rayjob_spec_of(obj) for obj in release.objects if obj["kind"] in ("RayJob", "CronWorkflow")]


def worker_groups(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Worker groups of a RayJob spec by name."""
    return {group["groupName"]: group for group in spec["rayClusterSpec"]["workerGroupSpecs"]}


class TestRender:
    """helm install/lint succeed and every object is valid for Kubernetes and its CRD."""

    def test_lint_passes(self, helm: HelmRunner) -> None:
        """Helm's linter reports nothing worse than informational messages."""
        result = helm.lint()
        assert result["TotalChartsLinted"] == 1
        assert not result["Errors"]
        assert [m for m in result["Messages"] if m["Severity"] > 1] == []

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_every_object_validates(self, releases: dict[str, Release], values: str) -> None:
        """Built-in kinds pass kubernetes-validate (strict), custom resources their CRD schema."""
        release = releases[values]
        assert release.objects
        for obj in release.objects:
            validate(obj)

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_api_server_received_the_manifest(self, releases: dict[str, Release], values: str) -> None:
        """Helm created exactly the objects of its rendered manifest through the API."""
        release = releases[values]

        def key(obj: dict[str, Any]) -> tuple[str, str, str]:
            return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]

        assert sorted(map(key, release.posted)) == sorted(map(key, release.objects))
        assert all(obj["metadata"]["annotations"]["meta.helm.sh/release-name"] for obj in release.posted)

    def test_scheduled_objects_validate(self, scheduled: Release) -> None:
        """With the schedule on, the CronWorkflow and the RayJob each run creates validate."""
        kinds = {obj["kind"] for obj in scheduled.objects}
        assert "CronWorkflow" in kinds
        assert "RayJob" not in kinds
        for obj in scheduled.objects:
            validate(obj)
        validate(scheduled_rayjob(scheduled.one("CronWorkflow")))

    def test_notes_say_what_was_installed_and_how_to_follow_it(
        self, releases: dict[str, Release], scheduled: Release
    ) -> None:
        """helm install prints the RayJob (or the CronWorkflow) and the kubectl commands to follow it."""
        notes = releases["default"].result["info"]["notes"]
        rayjob = releases["default"].one("RayJob")["metadata"]["name"]
        assert f"get rayjob {rayjob} -w" in notes
        assert (
            "logs -f -c driver-log -l ray.io/node-type=head,app.kubernetes.io/instance=batch-inference"
            in notes
        )
        assert "port-forward svc/" in notes
        scheduled_notes = scheduled.result["info"]["notes"]
        cron = scheduled.one("CronWorkflow")["metadata"]["name"]
        assert f"get cronworkflow {cron}" in scheduled_notes
        assert "get rayjob " not in scheduled_notes

    def test_rayjob_name_fits_kuberay_limit(self, helm: HelmRunner) -> None:
        """A long release name still gives a RayJob name KubeRay accepts (<= 47 characters)."""
        release = helm.install(release="a-long-release-name-for-nightly-batch-classification")
        assert len(release.one("RayJob")["metadata"]["name"]) <= 47


class TestValuesSchema:
    """values.schema.json rejects what it should, and stays in step with the pipeline."""

    @pytest.mark.parametrize(
        "values",
        [
            {"iamge": {"repository": "x"}},
            {"image": {"repository": "x", "tga": "1"}},
            {"workerGroups": {"gpu": {"maxReplica": 3}}},
            {"rayJob": {"backoffLimit": -1}},
            {"config": {"model": {"nmae": "resnet18"}}},
            {"config": {"inference": {"device": "tpu"}}},
            {"workerGroups": {"gpu": {"resources": {"limits": {"nvidia.com/gpu": None}}}}},
            {"head": {"resources": {"limits": None}}},
            {"rayAuth": {"existingSecret": None}},
        ],
        ids=[
            "typo-top-level",
            "typo-nested",
            "typo-worker-group",
            "negative-retries",
            "typo-in-pipeline-config",
            "bad-pipeline-enum",
            "gpu-group-without-gpus",
            "container-without-limits",
            "auth-without-secret",
        ],
    )
    def test_bad_values_are_rejected(self, helm: HelmRunner, values: dict[str, Any]) -> None:
        """helm install fails on the schema before anything reaches the cluster."""
        with pytest.raises(HelmRefused, match=r"(?i)schema|values don't meet|required"):
            helm.install(values)

    def test_schema_closes_every_object(self) -> None:
        """Every object schema of the chart's own values forbids unknown keys."""
        schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                if node.get("type") == "object" and "properties" in node:
                    assert node.get("additionalProperties") is False, f"{path} allows unknown keys"
                for key, value in node.items():
                    walk(value, f"{path}/{key}")
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    walk(value, f"{path}/{index}")

        walk(schema, "#")

    def test_embedded_pipeline_schema_is_current(self) -> None:
        """The config schema in values.schema.json is what `pipeline config --schema` prints now."""
        sync = load_script("sync-config-schema.py")
        current = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
        assert sync.embedded(current, sync.pipeline_schema()) == current, (
            "values.schema.json is stale: run .venv/bin/python deploy/helm/sync-config-schema.py"
        )

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_rendered_config_loads_in_the_pipeline(
        self, releases: dict[str, Release], values: str, tmp_path: Path
    ) -> None:
        """The ConfigMap's config.yaml passes the pipeline's own loader (pydantic + semantic checks)."""
        config_file = tmp_path / "config.yaml"
        config_file.write_text(releases[values].pipeline_config()["data"]["config.yaml"], encoding="utf-8")
        config = load_config(config_file, environ={})
        assert config.resources.placement == "worker_groups"
        assert config.logging.format == "json"

    @pytest.mark.parametrize("name", ["values.yaml", *(f"values-{env}.yaml" for env in ENVIRONMENTS)])
    def test_every_value_has_a_doc_comment(self, name: str) -> None:
        """Each key in the values files has a `# --` comment above it (helm-docs style)."""
        lines = (CHART / name).read_text(encoding="utf-8").splitlines()
        undocumented = []
        for number, line in enumerate(lines):
            if not re.match(r"^\s*[\"\w./-]+:(\s|$)", line):
                continue
            above = number - 1
            while (
                above >= 0
                and lines[above].lstrip().startswith("#")
                and not lines[above].lstrip().startswith("# --")
            ):
                above -= 1
            if above < 0 or not lines[above].lstrip().startswith("# --"):
                undocumented.append(f"{name}:{number + 1}: {line.strip()}")
        assert undocumented == []


class TestRayJob:
    """The RayJob: head without work, autoscaling CPU and GPU groups, deadlines, the config mount."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_head_runs_no_work(self, releases: dict[str, Release], scheduled: Release, values: str) -> None:
        """The head advertises no CPUs, so Ray schedules no task or actor there."""
        for spec in rayjob_specs(releases[values]) + rayjob_specs(scheduled):
            assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_groups_advertise_the_config_resources(self, releases: dict[str, Release], values: str) -> None:
        """CPU pods advertise config.resources.cpu_group_resource, GPU pods the GPU one."""
        release = releases[values]
        config = yaml.safe_load(release.pipeline_config()["data"]["config.yaml"])["resources"]
        for spec in rayjob_specs(release):
            groups = worker_groups(spec)
            assert set(groups) == {"cpu", "gpu"}
            cpu = _get_custom_resources({}, groups["cpu"]["rayStartParams"], "cpu")
            gpu = _get_custom_resources({}, groups["gpu"]["rayStartParams"], "gpu")
            assert cpu == {config["cpu_group_resource"]: 1000}
            assert gpu == {config["gpu_group_resource"]: 1000}
            gpu_container = groups["gpu"]["template"]["spec"]["containers"][0]
            assert groups["gpu"]["rayStartParams"]["num-gpus"] == str(
                gpu_container["resources"]["limits"]["nvidia.com/gpu"]
            )
            assert gpu_container["resources"]["requests"]["nvidia.com/gpu"] >= 1

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_gpu_group_is_placed_on_gpu_nodes(self, releases: dict[str, Release], values: str) -> None:
        """The GPU group tolerates the GPU taint and selects GPU nodes."""
        for spec in rayjob_specs(releases[values]):
            pod = worker_groups(spec)["gpu"]["template"]["spec"]
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
            assert pod["nodeSelector"] or pod.get("affinity")

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_autoscaling_and_lifecycle(self, releases: dict[str, Release], values: str) -> None:
        """In-tree autoscaling with min <= max per group; the job has deadlines, retries and clean-up."""
        for spec in rayjob_specs(releases[values]):
            cluster = spec["rayClusterSpec"]
            assert cluster["enableInTreeAutoscaling"] is True
            for group in cluster["workerGroupSpecs"]:
                assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            assert spec["shutdownAfterJobFinishes"] is True
            for field in (
                "ttlSecondsAfterFinished",
                "activeDeadlineSeconds",
                "preRunningDeadlineSeconds",
                "backoffLimit",
            ):
                assert isinstance(spec[field], int)
            assert spec["activeDeadlineSeconds"] > spec["preRunningDeadlineSeconds"]

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_every_ray_node_exports_metrics(self, releases: dict[str, Release], values: str) -> None:
        """Head and every worker group start with metrics-export-port 8080, served as port "metrics"."""
        for spec in rayjob_specs(releases[values]):
            cluster = spec["rayClusterSpec"]
            for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
                assert group["rayStartParams"]["metrics-export-port"] == "8080"
                ports = {
                    p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]
                }
                assert ports["metrics"] == 8080

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_entrypoint_reads_the_mounted_config(self, releases: dict[str, Release], values: str) -> None:
        """The entrypoint reads /etc/pipeline/config.yaml, mounted from the ConfigMap in every Ray pod."""
        release = releases[values]
        configmap = release.pipeline_config()
        mounted = yaml.safe_load(configmap["data"]["config.yaml"])
        mounted["resources"].pop("worker_groups")  # rendered from workerGroups: test_chart_placement.py
        # rendered from stopGraceSeconds (the default 60 in every environment): test_chart_kuberay.py
        assert mounted["resources"].pop("stop_grace_s") == 60
        assert mounted == _expected_config(values)
        for spec in rayjob_specs(release):
            assert spec["entrypoint"] == "pipeline run --config /etc/pipeline/config.yaml"
            cluster = spec["rayClusterSpec"]
            for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
                pod = group["template"]["spec"]
                volumes = {v["name"]: v for v in pod["volumes"]}
                mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
                mount = mounts["/etc/pipeline"]
                assert mount["readOnly"] is True
                assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]

    def test_runtime_env_is_yaml_for_the_jobs_api(self, releases: dict[str, Release]) -> None:
        """runtimeEnvYAML parses to a runtime_env of env_vars only (the image holds the code)."""
        spec = releases["default"].one("RayJob")["spec"]
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert set(runtime_env) == {"env_vars"}
        assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())

    def test_upgrade_makes_a_new_run(self, releases: dict[str, Release]) -> None:
        """The one-off RayJob's name carries the release revision, so each upgrade or rollback runs anew."""
        assert releases["default"].one("RayJob")["metadata"]["name"] == "batch-inference-1"


def _expected_config(values: str) -> dict[str, Any]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["config"]
    if values == "default":
        return defaults
    from deploy_manifests import deep_merge

    return deep_merge(defaults, environment_values(values).get("config", {}))
