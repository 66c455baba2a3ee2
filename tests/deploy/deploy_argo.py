"""What Argo's executor does with the scheduled Workflow's one step, and what KubeRay shows it.

Argo 4.1's executor (workflow/executor/resource.go) runs a resource template as
``kubectl create -f <manifest> -o json``, then polls the created object by name. Each poll it
evaluates ``failureCondition`` and ``successCondition``, both parsed as Kubernetes label
selectors over JSON paths of the object (gjson), with one difference that matters:

- the step FAILS when ANY requirement of ``failureCondition`` matches (each is checked alone);
- the step SUCCEEDS when EVERY requirement of ``successCondition`` matches;
- otherwise it polls again.

A requirement follows ``k8s.io/apimachinery/pkg/labels``: ``key in (a, b)`` / ``key == a`` need
the path to exist with one of the values; ``key notin (...)`` / ``key != a`` match when the path is
absent or has another value; ``key`` / ``!key`` test existence.

``KUBERAY_LIFECYCLES`` are the statuses a RayJob passes through in KubeRay 1.7
(ray-operator/controllers/ray/rayjob_controller.go): as persisted, because the executor reads
what the API server holds. Note that a failed attempt that will be retried is never persisted
as ``Failed``: ``checkBackoffLimitAndUpdateStatusIfNeeded`` turns it into ``Retrying`` before the
status update, with the Ray job's status still ``FAILED``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from deploy_manifests import NAMESPACE, SCHEDULED_RUN

if TYPE_CHECKING:
    from deploy_fake_api import FakeKubeAPI

Obj = dict[str, Any]

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=|\bnotin\b|\bin\b|>|<)\s*(?P<values>\([^)]*\)|[^,()\s]+))?\s*$"
)


@dataclass(frozen=True)
class Requirement:
    """One requirement of a label selector: a JSON path, an operator and its values."""

    key: str
    operator: str  # in, notin, exists, !exists, gt, lt
    values: tuple[str, ...]

    def matches(self, obj: Obj) -> bool:
        """``labels.Requirement.Matches`` over the object's JSON, as Argo's gjsonLabels presents it."""
        present, value = _lookup(obj, self.key)
        if self.operator == "in":
            return present and value in self.values
        if self.operator == "notin":
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if not present:
            return False
        number, bound = int(value), int(self.values[0])
        return number > bound if self.operator == "gt" else number < bound


def _lookup(obj: Obj, path: str) -> tuple[bool, str]:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, ""
        node = node[part]
    if isinstance(node, bool):
        return True, str(node).lower()
    return True, "" if node is None else str(node)


def parse_selector(text: str) -> list[Requirement]:
    """Requirements of a selector: comma-separated, commas inside ``( )`` belong to a value set."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    requirements = []
    for part in parts:
        match = _REQUIREMENT.match(part)
        assert match, f"not a selector requirement: {part!r}"
        raw = (match["values"] or "").strip("()")
        values = tuple(v.strip() for v in raw.split(",") if v.strip())
        operator = {"==": "in", "=": "in", "!=": "notin", "in": "in", "notin": "notin", ">": "gt", "<": "lt"}
        if match["op"]:
            requirements.append(Requirement(match["key"], operator[match["op"]], values))
        else:
            requirements.append(Requirement(match["key"], "!exists" if match["neg"] else "exists", ()))
    return requirements


@dataclass(frozen=True)
class ResourceStep:
    """The scheduled Workflow's resource template, as the executor reads it."""

    action: str
    manifest: str
    success: list[Requirement]
    failure: list[Requirement]

    @classmethod
    def of(cls, cron_workflow: Obj) -> ResourceStep:
        """The CronWorkflow's one resource step."""
        (template,) = [t for t in cron_workflow["spec"]["workflowSpec"]["templates"] if "resource" in t]
        resource = template["resource"]
        return cls(
            resource["action"],
            resource["manifest"],
            parse_selector(resource.get("successCondition", "")) if resource.get("successCondition") else [],
            parse_selector(resource.get("failureCondition", "")) if resource.get("failureCondition") else [],
        )

    def outcome(self, obj: Obj) -> str:
        """``failed``, ``succeeded`` or ``pending`` for one poll of the object (matchConditions)."""
        if any(requirement.matches(obj) for requirement in self.failure):
            return "failed"
        if all(requirement.matches(obj) for requirement in self.success):
            return "succeeded"
        return "pending"

    def manifest_for(self, workflow_name: str) -> Obj:
        """The manifest with Argo's placeholders filled in for one Workflow."""
        text = self.manifest
        for placeholder, value in {**SCHEDULED_RUN, "{{workflow.name}}": workflow_name}.items():
            text = text.replace(placeholder, value)
        assert "{{" not in text, f"unfilled Argo placeholder in {text}"
        manifest: Obj = yaml.safe_load(text)
        return manifest

    def run_create(self, api: FakeKubeAPI, workflow_name: str) -> tuple[int, Obj]:
        """What ``kubectl create -f`` of the step's manifest gets from the API: (status code, body)."""
        assert self.action == "create", self.action
        return api.create(f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs", self.manifest_for(workflow_name))


def rayjob_with_status(deployment: str, job: str | None = None, **extra: str) -> Obj:
    """A RayJob object as the API server holds it, with these statuses."""
    status: Obj = {"jobDeploymentStatus": deployment, **extra}
    if job is not None:
        status["jobStatus"] = job
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "r"}, "status": status}


# (jobDeploymentStatus, jobStatus or None) as persisted, in order; the last is where it stays.
KUBERAY_LIFECYCLES: dict[str, list[tuple[str, str | None]]] = {
    "succeeds": [
        ("Initializing", "NEW"),
        ("Running", "PENDING"),
        ("Running", "RUNNING"),
        ("Running", "SUCCEEDED"),  # the Ray job ended; KubeRay waits for the driver's end time
        ("Complete", "SUCCEEDED"),
    ],
    "fails, is retried, then succeeds": [
        ("Initializing", "NEW"),
        ("Running", "RUNNING"),
        ("Retrying", "FAILED"),  # Failed -> Retrying in the same reconcile: Failed is never stored
        ("New", "NEW"),  # the failed attempt's cluster deleted, the status reset
        ("Initializing", "NEW"),
        ("Running", "RUNNING"),
        ("Complete", "SUCCEEDED"),
    ],
    "fails after its last retry": [
        ("Initializing", "NEW"),
        ("Running", "RUNNING"),
        ("Running", "FAILED"),
        ("Failed", "FAILED"),
    ],
    "loses its head pod: the preStop hook fails the attempt, which is retried": [
        ("Initializing", "NEW"),
        ("Running", "RUNNING"),
        ("Retrying", "FAILED"),  # the driver's exit 143, read from the terminating head (the hook's hold)
        ("New", "NEW"),
        ("Initializing", "NEW"),
        ("Running", "RUNNING"),
        ("Complete", "SUCCEEDED"),
    ],
    "loses its head pod, the failure unread: the job is resubmitted to the recreated head": [
        ("Initializing", "NEW"),
        ("Running", "RUNNING"),
        ("Running", "RUNNING"),  # status checks fail while no head answers (jobStatusCheckFailureStartTime)
        ("Running", "PENDING"),  # the new head does not know the job: reconcileHTTPModeJobNotFound submits it
        ("Running", "RUNNING"),
        ("Complete", "SUCCEEDED"),
    ],
    "loses its head pod, which is not back within the status-check timeout": [
        ("Initializing", "NEW"),
        ("Running", "RUNNING"),
        ("Failed", "RUNNING"),  # reason JobStatusCheckTimeoutExceeded (300 s): never retried
    ],
    "is stopped (ray job stop, or the dashboard)": [
        ("Initializing", "NEW"),
        ("Running", "RUNNING"),
        ("Running", "STOPPED"),
        ("Complete", "STOPPED"),  # a stopped job is Complete, not Failed, and never retried
    ],
    "passes its activeDeadlineSeconds": [
        ("Initializing", "NEW"),
        ("Running", "RUNNING"),
        ("Failed", "RUNNING"),  # reason DeadlineExceeded: never retried
    ],
    "cannot start its cluster in preRunningDeadlineSeconds": [
        ("Initializing", "NEW"),
        ("Failed", "NEW"),
    ],
    "fails validation": [
        ("ValidationFailed", None),
    ],
}
# How each lifecycle must end the Argo step.
EXPECTED_OUTCOME = {
    "succeeds": "succeeded",
    "fails, is retried, then succeeds": "succeeded",
    "fails after its last retry": "failed",
    "loses its head pod: the preStop hook fails the attempt, which is retried": "succeeded",
    "loses its head pod, the failure unread: the job is resubmitted to the recreated head": "succeeded",
    "loses its head pod, which is not back within the status-check timeout": "failed",
    "is stopped (ray job stop, or the dashboard)": "failed",
    "passes its activeDeadlineSeconds": "failed",
    "cannot start its cluster in preRunningDeadlineSeconds": "failed",
    "fails validation": "failed",
}
