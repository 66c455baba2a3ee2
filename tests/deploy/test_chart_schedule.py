"""The optional Argo CronWorkflow: one uniquely named RayJob per run, no overlaps, history kept.

TestArgoStep runs the Workflow's logic: Argo's executor's create and its success/failure
conditions (deploy_argo.py) against every status a RayJob passes through in KubeRay 1.7.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from deploy_argo import EXPECTED_OUTCOME, KUBERAY_LIFECYCLES, ResourceStep, rayjob_with_status
from deploy_fake_api import FakeKubeAPI, crd_resources
from deploy_manifests import CRD_DIR, ENVIRONMENTS, HelmRefused, HelmRunner, Release, scheduled_rayjob

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
KUBERAY_MAX_RAYJOB_NAME = 47  # MaxRayJobNameLength in KubeRay 1.7 (utils/constant.go)
DAY = 86400


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
        assert manifest["metadata"]["generateName"] == "{{workflow.name}}-"

    def test_run_writes_a_dated_output(self, cron: dict, scheduled: Release) -> None:
        """Each run's output is <config.output.uri>/<date>, so a re-run of the same night resumes it."""
        config = yaml.safe_load(scheduled.pipeline_config()["data"]["config.yaml"])
        runtime_env = yaml.safe_load(scheduled_rayjob(cron)["spec"]["runtimeEnvYAML"])
        assert runtime_env["env_vars"]["PIPELINE_OUTPUT__URI"] == f"{config['output']['uri']}/2026-01-01"
        assert runtime_env["env_vars"]["PYTHONUNBUFFERED"] == "1"

    def test_scheduled_rayjob_is_the_chart_rayjob(self, cron: dict, releases: dict[str, Release]) -> None:
        """Apart from its dated output, a scheduled run's RayJob is the one-off RayJob."""
        one_off = copy.deepcopy(releases["default"].one("RayJob")["spec"])  # the fixture is shared
        scheduled = scheduled_rayjob(cron)["spec"]
        env_vars = yaml.safe_load(scheduled.pop("runtimeEnvYAML"))["env_vars"]
        one_off_env_vars = yaml.safe_load(one_off.pop("runtimeEnvYAML"))["env_vars"]
        assert env_vars.pop("PIPELINE_OUTPUT__URI").startswith(
            one_off_env_vars.pop("PIPELINE_OUTPUT__URI") + "/"
        )
        assert env_vars == one_off_env_vars
        assert scheduled == one_off

    def test_workflow_pod_is_non_root(self, cron: dict) -> None:
        """Argo's executor pod runs non-root under RuntimeDefault seccomp, with its own ServiceAccount."""
        workflow = cron["spec"]["workflowSpec"]
        assert workflow["securityContext"]["runAsNonRoot"] is True
        assert workflow["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert workflow["serviceAccountName"].endswith("-workflow")

    @pytest.mark.parametrize("env", ["staging", "prod"])
    def test_scheduled_environments_do_not_run_on_install(
        self, releases: dict[str, Release], env: str
    ) -> None:
        """Staging and prod run on their schedule only: installing renders no one-off RayJob."""
        kinds = [obj["kind"] for obj in releases[env].objects]
        assert "CronWorkflow" in kinds
        assert "RayJob" not in kinds


class TestArgoStep:
    """The step passes or fails with its RayJob, whatever KubeRay 1.7 shows on the way, and can be retried."""

    @pytest.mark.parametrize("lifecycle", list(KUBERAY_LIFECYCLES))
    def test_step_ends_as_the_rayjob_ends(self, cron: dict, lifecycle: str) -> None:
        """Polled at each status the RayJob passes through, the step waits, then ends as the run did."""
        step = ResourceStep.of(cron)
        statuses = KUBERAY_LIFECYCLES[lifecycle]
        outcomes = [step.outcome(rayjob_with_status(deployment, job)) for deployment, job in statuses]
        ended = [outcome for outcome in outcomes if outcome != "pending"]
        seen = list(zip(statuses, outcomes, strict=True))
        assert ended, f"the step never ends when the RayJob {lifecycle}: {seen}"
        assert ended[0] == EXPECTED_OUTCOME[lifecycle], seen
        if ended[0] == "succeeded":
            assert outcomes.index("succeeded") == len(statuses) - 1, "succeeded before the run ended"

    def test_a_stopped_run_fails_the_step(self, cron: dict) -> None:
        """A Ray job stopped by hand leaves the RayJob Complete with jobStatus STOPPED: the step fails."""
        step = ResourceStep.of(cron)
        assert step.outcome(rayjob_with_status("Complete", "STOPPED")) == "failed"
        assert step.outcome(rayjob_with_status("Running", "STOPPED")) == "failed"

    def test_a_retried_attempt_does_not_fail_the_step(self, cron: dict) -> None:
        """While KubeRay retries (Retrying with jobStatus FAILED, then New), the step keeps waiting."""
        step = ResourceStep.of(cron)
        for deployment, job in (("Retrying", "FAILED"), ("New", "NEW"), ("Initializing", "NEW")):
            assert step.outcome(rayjob_with_status(deployment, job)) == "pending", (deployment, job)

    @pytest.mark.parametrize("release", ["batch-inference", "a-long-release-name-for-nightly-classification"])
    def test_argo_retry_creates_a_new_rayjob(self, helm: HelmRunner, release: str) -> None:
        """Creating the step's RayJob again for one Workflow (argo retry) succeeds, under a new valid name."""
        cron = helm.install({"schedule": {"enabled": True}, "rayJob": {"enabled": False}}, release=release)
        step = ResourceStep.of(cron.one("CronWorkflow"))
        workflow = f"{cron.one('CronWorkflow')['metadata']['name']}-1767225600"  # Argo's "<cron>-<unix time>"
        api = FakeKubeAPI(resources=crd_resources(CRD_DIR), unique_names=True)
        attempts = [step.run_create(api, workflow) for _ in range(2)]
        assert [code for code, _ in attempts] == [201, 201], attempts[-1][1]
        names = [body["metadata"]["name"] for _, body in attempts]
        assert len(set(names)) == 2
        for name in names:
            assert name.startswith(f"{workflow}-")
            assert len(name) <= KUBERAY_MAX_RAYJOB_NAME, name
            assert DNS_1035.match(name), name


def cron_period_seconds(cron: str) -> int:
    """The period of a daily ("M H * * *") or hourly ("M * * * *") cron expression."""
    minute, hour, *rest = cron.split()
    assert rest == ["*", "*", "*"], f"not a daily or hourly schedule: {cron}"
    assert minute.isdigit(), f"not a daily or hourly schedule: {cron}"
    return DAY if hour.isdigit() else 3600


class TestDeadlines:
    """No RayJob outlives its Workflow, and a night's run ends before the next is due."""

    @staticmethod
    def scheduled_releases(releases: dict[str, Release], scheduled: Release) -> list[Release]:
        return [scheduled, *(releases[env] for env in ENVIRONMENTS if releases[env].of_kind("CronWorkflow"))]

    def test_workflow_outlasts_every_attempt_of_its_rayjob(
        self, releases: dict[str, Release], scheduled: Release
    ) -> None:
        """The Workflow deadline exceeds backoffLimit + 1 attempts to their deadline and the stops between."""
        checked = 0
        for release in self.scheduled_releases(releases, scheduled):
            cron = release.one("CronWorkflow")
            spec = scheduled_rayjob(cron)["spec"]
            cluster = spec["rayClusterSpec"]
            groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
            grace = max(group["template"]["spec"]["terminationGracePeriodSeconds"] for group in groups)
            attempts = spec["backoffLimit"] + 1
            longest_rayjob = attempts * spec["activeDeadlineSeconds"] + spec["backoffLimit"] * grace
            assert cron["spec"]["workflowSpec"]["activeDeadlineSeconds"] > longest_rayjob
            checked += 1
        assert checked >= 3  # the scheduled defaults, staging and prod

    def test_a_night_ends_before_the_next_is_due(
        self, releases: dict[str, Release], scheduled: Release
    ) -> None:
        """A run started as late as startingDeadlineSeconds allows still ends within the cron's period."""
        for release in self.scheduled_releases(releases, scheduled):
            spec = release.one("CronWorkflow")["spec"]
            (schedule,) = spec["schedules"]
            latest_end = spec["startingDeadlineSeconds"] + spec["workflowSpec"]["activeDeadlineSeconds"]
            assert latest_end <= cron_period_seconds(schedule)

    @pytest.mark.parametrize(
        ("values", "named"),
        [
            (
                {"rayJob": {"enabled": False, "backoffLimit": 3}},
                r"schedule\.intervalSeconds.*rayJob\.backoffLimit",
            ),
            (
                {"rayJob": {"enabled": False, "activeDeadlineSeconds": 60000}},
                r"schedule\.intervalSeconds.*rayJob\.activeDeadlineSeconds",
            ),
            (
                {"rayJob": {"enabled": False}, "schedule": {"intervalSeconds": 3600}},
                r"schedule\.intervalSeconds",
            ),
        ],
        ids=["too-many-retries", "attempt-too-long", "hourly-schedule"],
    )
    def test_a_run_longer_than_the_interval_fails_to_render(
        self, helm: HelmRunner, values: dict, named: str
    ) -> None:
        """Deadlines that let a run outlast the schedule's interval stop helm install, naming the keys."""
        with pytest.raises(HelmRefused, match=named):
            helm.install({**values, "schedule": {"enabled": True, **values.get("schedule", {})}})

    def test_prerunning_deadline_within_the_attempt(self, helm: HelmRunner) -> None:
        """preRunningDeadlineSeconds at or above activeDeadlineSeconds stops helm install, naming both."""
        named = r"rayJob\.preRunningDeadlineSeconds.*rayJob\.activeDeadlineSeconds"
        with pytest.raises(HelmRefused, match=named):
            helm.install({"rayJob": {"preRunningDeadlineSeconds": 21600}})
