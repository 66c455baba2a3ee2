"""One decode for several models: the crop decoded, each model's input derived from it, what is refused."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.compute.model import Preprocessing
from pipeline.compute.shared_decode import Derivation, derive, plan_shared_decode
from pipeline.errors import ConfigError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _prep(resize: int, crop: int, mode: str = "shorter") -> Preprocessing:
    return Preprocessing(resize, crop, MEAN, STD, "bilinear", mode)


def test_the_same_preprocessing_is_decoded_as_it_is():
    """Models with one preprocessing share its own decode, untouched: their single-model pixels."""
    decoded, derivations = plan_shared_decode([_prep(256, 224), _prep(256, 224)])
    assert decoded == _prep(256, 224)
    assert all(d.identity for d in derivations)


def test_the_widest_crop_is_decoded_and_narrower_ones_derived():
    """A model cropping less of the image gets its centre square of the wider crop, never upsampled."""
    decoded, (wide, narrow) = plan_shared_decode([_prep(232, 224), _prep(256, 224)])
    assert decoded.crop_size >= 224
    assert decoded.crop_size / decoded.resize_size == pytest.approx(224 / 232, abs=0.01)
    assert wide.square == decoded.crop_size
    assert narrow.size == 224
    assert narrow.square >= 224  # at least the model's own pixels: a downsample
    assert narrow.square / decoded.crop_size == pytest.approx((224 / 256) / (224 / 232), abs=0.01)


def test_a_smaller_model_input_is_a_resize_of_the_crop():
    """Same fraction, smaller crop: the decoded crop resized down to the model's size."""
    decoded, (big, small) = plan_shared_decode([_prep(256, 224), _prep(64, 56)])
    assert (decoded.resize_size, decoded.crop_size) == (256, 224)
    assert big.identity
    assert (small.square, small.size) == (224, 56)
    crops = np.full((3, 224, 224, 3), 200, np.uint8)
    crops[:, :112] = 10
    out = derive(crops, small)
    assert out.shape == (3, 56, 56, 3)
    assert out.dtype == np.uint8
    assert out[0, 5, 5, 0] == 10
    assert out[0, 50, 5, 0] == 200


def test_the_identity_leaves_the_crops_alone():
    """An identity derivation returns the very crops the decode made."""
    crops = np.zeros((2, 8, 8, 3), np.uint8)
    assert derive(crops, Derivation(8, 8, "bilinear")) is crops


def test_models_that_resize_differently_cannot_share_a_decode():
    """shorter against squash: refused before any work, naming the model."""
    with pytest.raises(ConfigError) as caught:
        plan_shared_decode([_prep(256, 224), _prep(224, 224, "squash")])
    assert (caught.value.key, caught.value.value) == ("models[1]", "squash")
