"""models: which models share an inference actor: the estimate, the packing, each pool's share of the plan."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.run.placement import plan_resources, share_among_pools
from pipeline.run.pools import estimate_bytes, first_fit, parameter_count

if TYPE_CHECKING:
    from pipeline.run.placement import ResourcePlan


def test_first_fit_packs_in_order_into_groups_that_fit():
    """Each model goes into the first group with room; one too big for any gets a group of its own."""
    assert first_fit([4, 3, 2, 1], capacity=5) == [[0, 3], [1, 2]]
    assert first_fit([6, 2, 2], capacity=5) == [[0], [1, 2]]
    assert first_fit([4, 3, 2, 1], capacity=None) == [[0, 1, 2, 3]]  # no device memory given: one actor


def test_the_estimate_is_parameters_plus_a_batchs_activations_at_the_precision():
    """(parameters + batch x 32 x 3 x crop^2) x bytes per value: fp32 4, bf16 and fp16 2."""
    assert estimate_bytes(1_000, "fp32", crop_size=10, batch_size=2) == (1_000 + 2 * 32 * 300) * 4
    assert estimate_bytes(1_000, "bf16", crop_size=10, batch_size=2) == (1_000 + 2 * 32 * 300) * 2
    assert estimate_bytes(1_000, "auto", 10, 2) == estimate_bytes(1_000, "fp32", 10, 2)


def test_parameters_are_counted_from_the_payload_as_the_actor_receives_it():
    """A state dict counts its tensors' elements; a saved folder's file bytes count as fp32 values."""
    import torchvision

    model = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    state = model.state_dict()
    assert parameter_count(state) == sum(value.numel() for value in state.values())
    assert parameter_count({"model.safetensors": b"\0" * 4_000, "config.json": b"{}"}) == 1_000
    assert parameter_count((state, b"\0" * 40)) == parameter_count(state) + 10


def _plan(cluster: dict[str, float], *items: str) -> ResourcePlan:
    config = load_config(
        None, ["input.uri=/data/in", "output.uri=/data/out", "model.random_init=true", *items], environ={}
    )
    return plan_resources(config, cluster)


def test_pools_share_the_cpus_one_pool_would_have_had():
    """On CPU each of two pools takes half the actors' CPUs and threads: together they fit the node."""
    plan = _plan({"CPU": 8})
    shared = share_among_pools(plan, 2)
    assert shared.actor_num_cpus == plan.actor_num_cpus / 2
    assert shared.torch_threads == max(1, (plan.torch_threads or 0) // 2)
    assert shared.max_actors == plan.max_actors


def test_more_gpu_pools_than_gpus_are_refused_naming_the_key():
    """Two pools of whole-GPU actors on one GPU would wait for ever: refused, naming actor_num_gpus."""
    with pytest.raises(ConfigError) as caught:
        share_among_pools(_plan({"CPU": 8, "GPU": 1}), 2)
    assert (caught.value.key, caught.value.value) == ("resources.actor_num_gpus", 1.0)
    halves = share_among_pools(_plan({"CPU": 8, "GPU": 1}, "resources.actor_num_gpus=0.5"), 2)
    assert (halves.actor_num_gpus, halves.max_actors) == (0.5, 1)
    four = share_among_pools(_plan({"CPU": 32, "GPU": 4}, "resources.max_actors=4"), 2)
    assert (four.actor_num_gpus, four.min_actors, four.max_actors) == (1.0, 1, 2)
