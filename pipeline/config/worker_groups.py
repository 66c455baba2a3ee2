"""The worker groups a Ray cluster declares: the config's ``resources.worker_groups``.

With ``resources.placement: worker_groups`` the resource plan (:mod:`pipeline.run.placement`) is
computed from these declarations, never from the nodes that happen to be up when the driver
connects: a group that scales from zero has no node yet, and its GPUs must count all the same.
The Helm chart renders them from its ``workerGroups`` values into the config it mounts, so the
pods and the plan come from one place. A group's ``resources`` say which stage it hosts: the
decode tasks ask for ``resources.cpu_group_resource``, the inference actors for
``resources.gpu_group_resource``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pipeline.config.sections import ResourcesConfig


KEY = "resources.worker_groups"
# A Kubernetes memory quantity, as a pod's resources give it: 24Gi, 512Mi, 16G, 2e9.
MEMORY_QUANTITY = r"^[0-9]+(\.[0-9]+)?([eE][0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"


class WorkerGroup(BaseModel):
    """One group of identical worker pods, as the cluster declares it (each pod is one Ray node)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cpus: float = Field(ge=0)  # Ray's CPU resource of each pod (its num-cpus)
    gpus: int = Field(default=0, ge=0)  # Ray's GPU resource of each pod (its num-gpus)
    memory: str | None = Field(default=None, pattern=MEMORY_QUANTITY)  # each pod's memory limit
    min_replicas: int = Field(default=0, ge=0)  # pods up before any demand (0: scales from zero)
    max_replicas: int = Field(ge=0)  # the most pods the autoscaler may start
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources of each pod


def carrying(groups: Mapping[str, WorkerGroup], resource: str) -> dict[str, WorkerGroup]:
    """The groups whose pods advertise the Ray resource ``resource`` (a stage's placement key)."""
    return {name: group for name, group in groups.items() if group.resources.get(resource, 0) > 0}


def totals(groups: Mapping[str, WorkerGroup]) -> tuple[float, float]:
    """CPUs and GPUs of every group at its most replicas: what the cluster can grow to."""
    cpus = sum(group.cpus * group.max_replicas for group in groups.values())
    gpus = sum(group.gpus * group.max_replicas for group in groups.values())
    return float(cpus), float(gpus)


def gpu_actor_reach(groups: Mapping[str, WorkerGroup], gpus_per_actor: float) -> int:
    """How many actors of ``gpus_per_actor`` GPUs the groups hold at their most replicas."""
    return sum(int(group.gpus // gpus_per_actor) * group.max_replicas for group in groups.values())


def describe(name: str, group: WorkerGroup) -> str:
    """``'gpu' (pods of 1 GPU and 4 CPUs, 0 to 8 of them)``: a group as messages name it."""
    gpus = f"{group.gpus} GPU{'s' if group.gpus != 1 else ''} and " if group.gpus else ""
    return (
        f"'{name}' (pods of {gpus}{group.cpus:g} CPUs, {group.min_replicas} to {group.max_replicas} of them)"
    )


def check_declared(resources: ResourcesConfig, device: str) -> None:
    """Refuse worker groups that cannot host the run (ConfigError naming the key), before any work.

    Each stage needs a group carrying its resource; GPU actors (``device``: ``inference.device``)
    need GPUs in the inference groups, and no more actors than those GPUs hold. Only with
    ``resources.placement: worker_groups``; locally the groups are not read.
    """
    if resources.placement != "worker_groups":
        return
    groups, actor_num_gpus = resources.worker_groups, resources.actor_num_gpus
    cpu_resource, gpu_resource = resources.cpu_group_resource, resources.gpu_group_resource
    if not groups:
        raise ConfigError(
            KEY,
            {},
            "required with resources.placement worker_groups: each group's cpus, gpus, max_replicas "
            "and the Ray resources its pods carry (the Helm chart renders them from workerGroups)",
        )
    for resource, stage, key in (
        (cpu_resource, "the decode tasks", "resources.cpu_group_resource"),
        (gpu_resource, "the inference actors", "resources.gpu_group_resource"),
    ):
        if not carrying(groups, resource):
            raise ConfigError(
                KEY, sorted(groups), f"no group carries {key} '{resource}': {stage} could run nowhere"
            )
    inference = carrying(groups, gpu_resource)
    with_gpus = any(group.gpus for group in inference.values())
    if not with_gpus and (device == "cuda" or (actor_num_gpus or 0) > 0):
        key, value = (
            ("inference.device", device) if device == "cuda" else ("resources.actor_num_gpus", actor_num_gpus)
        )
        raise ConfigError(key, value, f"no group carrying '{gpu_resource}' declares GPUs ({KEY})")
    gpus_per_actor = actor_num_gpus if actor_num_gpus is not None else 1.0
    if not with_gpus or gpus_per_actor <= 0 or (device == "cpu" and not actor_num_gpus):
        return  # CPU actors: their count is bound by the CPUs the cluster has, as locally
    reach = gpu_actor_reach(inference, gpus_per_actor)
    held = ", ".join(describe(name, group) for name, group in inference.items())
    if reach == 0:
        raise ConfigError(KEY, sorted(inference), f"no actor of {gpus_per_actor:g} GPUs fits in {held}")
    for key, count in (
        ("resources.min_actors", resources.min_actors),
        ("resources.max_actors", resources.max_actors),
    ):
        if count is not None and count > reach:
            raise ConfigError(key, count, f"must be <= {reach}: the actors the GPU groups can hold ({held})")
