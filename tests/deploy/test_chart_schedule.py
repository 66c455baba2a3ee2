"""The optional Argo CronWorkflow: one uniquely named RayJob per run, no overlaps, history kept."""

from __future__ import annotations

import copy

import pytest
import yaml
from deploy_manifests import Release, scheduled_rayjob


@pytest.fixture(scope="module")
def cron(scheduled: Release) -> dict:
    """The rendered CronWorkflow."""
    return scheduled.one("CronWorkflow")


class TestCronWorkflow:
    """What Argo runs, and when."""

    def test_no_overlapping_runs_and_history_kept(self, cron: dict) -> None:
        """concurrencyPolicy Forbid; succeeded and failed Workflows are kept."""
        spec = cron["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["schedules"] == ["0 2 * * *"]
        assert spec["successfulJobsHistoryLimit"] > 0
        assert spec["failedJobsHistoryLimit"] > 0

    def test_each_run_creates_its_own_rayjob(self, cron: dict) -> None:
        """The one step creates a RayJob named after the Workflow, owned by it."""
        (template,) = cron["spec"]["workflowSpec"]["templates"]
        resource = template["resource"]
        assert resource["action"] == "create"
        assert resource["setOwnerReference"] is True
        manifest = yaml.safe_load(resource["manifest"])
        assert manifest["kind"] == "RayJob"
        assert manifest["metadata"]["name"] == "{{workflow.name}}"
        assert len(scheduled_rayjob(cron)["metadata"]["name"]) <= 47

    def test_step_follows_the_rayjob_status(self, cron: dict) -> None:
        """Success needs jobStatus SUCCEEDED and a Complete deployment; a Failed deployment fails the step."""
        resource = cron["spec"]["workflowSpec"]["templates"][0]["resource"]
        success = {part.strip() for part in resource["successCondition"].split(",")}
        assert success == {"status.jobStatus == SUCCEEDED", "status.jobDeploymentStatus == Complete"}
        assert resource["failureCondition"] == "status.jobDeploymentStatus in (Failed, ValidationFailed)"

    def test_run_writes_a_dated_output(self, cron: dict, scheduled: Release) -> None:
        """Each run's output is <config.output.uri>/<date>, so a re-run of the same night resumes it."""
        config = yaml.safe_load(scheduled.pipeline_config()["data"]["config.yaml"])
        runtime_env = yaml.safe_load(scheduled_rayjob(cron)["spec"]["runtimeEnvYAML"])
        assert runtime_env["env_vars"]["PIPELINE_OUTPUT__URI"] == f"{config['output']['uri']}/2026-01-01"
        assert runtime_env["env_vars"]["PYTHONUNBUFFERED"] == "1"

    def test_scheduled_rayjob_is_the_chart_rayjob(self, cron: dict, releases: dict[str, Release]) -> None:
        """Apart from its output env var, a scheduled run's RayJob is the one-off RayJob."""
        one_off = copy.deepcopy(releases["default"].one("RayJob")["spec"])  # the fixture is shared
        scheduled = scheduled_rayjob(cron)["spec"]
        env_vars = yaml.safe_load(scheduled.pop("runtimeEnvYAML"))["env_vars"]
        env_vars.pop("PIPELINE_OUTPUT__URI")
        assert env_vars == yaml.safe_load(one_off.pop("runtimeEnvYAML"))["env_vars"]
        assert scheduled == one_off

    def test_workflow_pod_is_non_root(self, cron: dict) -> None:
        """Argo's executor pod runs non-root under RuntimeDefault seccomp, with its own ServiceAccount."""
        workflow = cron["spec"]["workflowSpec"]
        assert workflow["securityContext"]["runAsNonRoot"] is True
        assert workflow["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert workflow["serviceAccountName"].endswith("-workflow")
        assert workflow["activeDeadlineSeconds"] > 21600 + 1800

    @pytest.mark.parametrize("env", ["staging", "prod"])
    def test_scheduled_environments_do_not_run_on_install(
        self, releases: dict[str, Release], env: str
    ) -> None:
        """Staging and prod run on their schedule only: installing renders no one-off RayJob."""
        kinds = [obj["kind"] for obj in releases[env].objects]
        assert "CronWorkflow" in kinds
        assert "RayJob" not in kinds
