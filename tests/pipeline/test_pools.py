"""models: which models share an inference actor: the memory estimate and the first-fit packing."""

from __future__ import annotations

from pipeline.run.pools import estimate_bytes, first_fit, parameter_count


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
