"""A six-hour run keeps its pods: node consolidation, drains and disk pressure leave the head alone."""

from __future__ import annotations

import re
from typing import Any

import pytest
from deploy_manifests import ENVIRONMENTS, HelmRunner, Release, rayjob_spec_of, scheduled_rayjob, validate
from deploy_netpol import head_pod, selector_matches, worker_pods

ALL_VALUES = ["default", *ENVIRONMENTS]
DO_NOT_DISRUPT = {
    "karpenter.sh/do-not-disrupt": "true",
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
}
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}


def size_bytes(quantity: str) -> int:
    """Bytes of a binary-suffixed Kubernetes quantity ("4Gi", "24576Mi")."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|)", str(quantity))
    assert match, quantity
    return int(match.group(1)) * UNITS[match.group(2)]


def groups(release: Release) -> list[tuple[str, dict[str, Any]]]:
    """(head or worker, group spec) of every RayJob the release renders."""
    found = []
    for obj in release.objects:
        if obj["kind"] in ("RayJob", "CronWorkflow"):
            cluster = rayjob_spec_of(obj)["rayClusterSpec"]
            found.append(("head", cluster["headGroupSpec"]))
            found += [("worker", group) for group in cluster["workerGroupSpecs"]]
    return found


class TestConsolidation:
    """Karpenter and cluster-autoscaler leave the run's nodes alone; drains wait for the head."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_ray_pods_carry_the_do_not_disrupt_annotations(
        self, releases: dict[str, Release], values: str
    ) -> None:
        """Head and worker pods carry Karpenter's do-not-disrupt and cluster-autoscaler's safe-to-evict."""
        found = groups(releases[values])
        assert found
        for _, group in found:
            annotations = group["template"]["metadata"]["annotations"]
            assert DO_NOT_DISRUPT.items() <= annotations.items()

    def test_protection_follows_values(self, helm: HelmRunner) -> None:
        """disruption.protectWorkers false leaves workers unannotated; podAnnotations still apply."""
        release = helm.install({"disruption": {"protectWorkers": False}, "podAnnotations": {"team": "ml"}})
        for role, group in groups(release):
            annotations = group["template"]["metadata"]["annotations"]
            assert annotations["team"] == "ml"
            assert ("karpenter.sh/do-not-disrupt" in annotations) == (role == "head")

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_a_budget_holds_the_head_only(self, releases: dict[str, Release], values: str) -> None:
        """A PodDisruptionBudget (maxUnavailable 0) selects the head, no worker; an unready head may go."""
        release = releases[values]
        budget = release.one("PodDisruptionBudget")
        validate(budget)
        assert budget["spec"]["maxUnavailable"] == 0
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        selector = budget["spec"]["selector"]
        assert selector_matches(selector, head_pod(release).labels)
        for worker in worker_pods(release):
            assert not selector_matches(selector, worker.labels)

    def test_budget_can_be_turned_off(self, helm: HelmRunner) -> None:
        """disruption.headPodDisruptionBudget false renders no budget."""
        assert not helm.install({"disruption": {"headPodDisruptionBudget": False}}).of_kind(
            "PodDisruptionBudget"
        )


class TestScheduling:
    """Disk for the emptyDirs is requested; priority and the Kueue queue are there when asked for."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_ephemeral_storage_covers_the_empty_dirs(self, releases: dict[str, Release], values: str) -> None:
        """Each Ray container requests at least its pod's emptyDir size limits as ephemeral-storage."""
        for _, group in groups(releases[values]):
            pod = group["template"]["spec"]
            limits = sum(size_bytes(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"] if "emptyDir" in v)
            ray_container = pod["containers"][0]
            assert ray_container["name"] in ("ray-head", "ray-worker")
            assert size_bytes(ray_container["resources"]["requests"]["ephemeral-storage"]) >= limits > 0

    def test_a_given_request_is_kept(self, helm: HelmRunner) -> None:
        """A group's own ephemeral-storage request wins over the computed one."""
        release = helm.install(
            {"head": {"resources": {"requests": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "50Gi"}}}}
        )
        (head,) = [group for role, group in groups(release) if role == "head"]
        assert (
            head["template"]["spec"]["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "50Gi"
        )

    @pytest.mark.parametrize("scheduled", [False, True])
    def test_priority_and_kueue_queue(self, helm: HelmRunner, scheduled: bool) -> None:
        """priorityClassName reaches every Ray pod; kueueQueueName labels the RayJob (scheduled too)."""
        values = {"priorityClassName": "batch-high", "kueueQueueName": "gpu-queue"}
        if scheduled:
            values |= {"schedule": {"enabled": True}, "rayJob": {"enabled": False}}
        release = helm.install(values)
        for _, group in groups(release):
            assert group["template"]["spec"]["priorityClassName"] == "batch-high"
        rayjob = scheduled_rayjob(release.one("CronWorkflow")) if scheduled else release.one("RayJob")
        assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"

    def test_no_priority_or_queue_by_default(self, releases: dict[str, Release]) -> None:
        """By default neither a priorityClassName nor a Kueue label is rendered."""
        for release in releases.values():
            assert "kueue.x-k8s.io/queue-name" not in release.result["manifest"]
            for _, group in groups(release):
                assert "priorityClassName" not in group["template"]["spec"]
