"""Which models of a ``models:`` run share an inference actor, and which get a pool of their own.

Decided on the driver before Ray starts (docs/architecture.md, "Several models: one actor, or
several pools"). ``resources.model_groups`` names the pools outright; else, with
``resources.actor_memory_gib`` set, each model's memory estimate (:func:`estimate_bytes`) is
packed first-fit, in the config's order, into pools that fit the device; else (a CPU run, or
the device's memory not given) every model shares one actor. :mod:`pipeline.run.graph` builds
one actor-pool stage per pool, chained over the same decoded blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.compute.inference import auto_batch_size

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.compute.multi_actor import ModelRun
    from pipeline.config import Config

#: Bytes per parameter and activation value at each precision (auto: fp32, the larger).
PRECISION_BYTES = {"auto": 4, "fp32": 4, "bf16": 2, "fp16": 2}

#: Activations allowed per image, as a multiple of its input tensor (3 x crop x crop values). An
#: allowance, not a measurement: a ResNet-50's largest activation at 224 px (64 x 112 x 112) is
#: about 5 inputs; 32 covers several alive at once and the allocator's rounding.
ACTIVATION_INPUTS_PER_IMAGE = 32

#: The share of actor_memory_gib the models' estimates may fill: CUDA's context, the allocator's cache.
MEMORY_MARGIN = 0.9

GIB = 2**30


@dataclass(frozen=True)
class Pool:
    """One inference actor pool: the models it holds (output names) and their summed estimate."""

    outputs: tuple[str, ...]
    estimate_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``pipeline plan --json``."""
        return {"models": list(self.outputs), "estimate_gib": round(self.estimate_bytes / GIB, 3)}


def parameter_count(payload: Any) -> int:
    """A payload's parameters: its tensors' elements; raw file bytes (saved folders, programs) as fp32.

    A random-init model (demo, tests) has no payload: its estimate is its activations alone.
    """
    if hasattr(payload, "numel"):
        return int(payload.numel())
    if isinstance(payload, bytes | bytearray | memoryview):
        return len(payload) // 4
    if isinstance(payload, dict):
        return sum(parameter_count(value) for value in payload.values())
    if isinstance(payload, list | tuple):
        return sum(parameter_count(value) for value in payload)
    return 0


def estimate_bytes(parameters: int, precision: str, crop_size: int, batch_size: int) -> int:
    """One model's memory on its device: parameters, plus the activation allowance of a batch.

    ``(parameters + batch_size x ACTIVATION_INPUTS_PER_IMAGE x 3 x crop_size^2) x bytes per value``.
    """
    activations = batch_size * ACTIVATION_INPUTS_PER_IMAGE * 3 * crop_size * crop_size
    return (parameters + activations) * PRECISION_BYTES[precision]


def first_fit(estimates: Sequence[int], capacity: int | None) -> list[list[int]]:
    """Model indexes packed first-fit, in order, into groups whose estimates sum to at most ``capacity``.

    None: one group. A model bigger than ``capacity`` alone gets a group of its own.
    """
    groups: list[list[int]] = []
    totals: list[int] = []
    for index, size in enumerate(estimates):
        slot = next(
            (i for i, total in enumerate(totals) if capacity is None or total + size <= capacity), None
        )
        if slot is None:
            groups.append([index])
            totals.append(size)
        else:
            groups[slot].append(index)
            totals[slot] += size
    return groups


def plan_pools(config: Config, runs: Sequence[ModelRun], payloads: Sequence[Any]) -> tuple[Pool, ...]:
    """The run's pools, in the order the graph chains them; each model's run in exactly one."""
    batch = config.inference.batch_size
    # Memory is asked about for a GPU: auto means the CUDA batch there, the larger one.
    batch_size = auto_batch_size("cuda") if batch == "auto" else int(batch)
    estimates = [
        estimate_bytes(parameter_count(payload), run.precision, run.spec.preprocessing.crop_size, batch_size)
        for run, payload in zip(runs, payloads, strict=True)
    ]
    outputs = [run.output for run in runs]
    res = config.resources
    if res.model_groups:
        groups = [[outputs.index(name) for name in group] for group in res.model_groups]
    else:
        capacity = None if res.actor_memory_gib is None else int(res.actor_memory_gib * GIB * MEMORY_MARGIN)
        groups = first_fit(estimates, capacity)
    return tuple(Pool(tuple(outputs[i] for i in group), sum(estimates[i] for i in group)) for group in groups)
