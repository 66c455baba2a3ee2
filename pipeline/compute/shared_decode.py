"""One decode for several models: the crop the decode stage makes, and each model's input derived from it.

Every model's preprocessing is a resize (short side, or both sides with ``squash``) to
``resize_size`` and a centre crop of ``crop_size``: the crop covers the fraction
``crop_size / resize_size`` of the short side. The decode stage crops the widest fraction any
model needs, at enough pixels that no model's input is upsampled; each model then takes the
centre square of its own fraction from that crop and resizes it to its ``crop_size``
(:func:`derive`, on the actor, in the model's own interpolation). A model whose preprocessing is
the decode's own gets the crop untouched, so its predictions are those of its single-model run.
Models that resize differently (``shorter`` against ``squash``) cannot share one decode: refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.compute.model import Preprocessing


@dataclass(frozen=True)
class Derivation:
    """How one model's input comes from the shared crop: its centre ``square``, resized to ``size``."""

    square: int  # side of the centre square taken from the decoded crop
    size: int  # the model's crop_size
    interpolation: str

    @property
    def identity(self) -> bool:
        """Whether the decoded crop is the model's input as it is."""
        return self.square == self.size

    def manifest_entry(self, decoded: Preprocessing) -> dict[str, Any]:
        """What the model's ``_SUCCESS`` records of how its pixels came to be."""
        return {"decoded": asdict(decoded), "centre_square": self.square, "resized_to": self.size}


def plan_shared_decode(preprocessings: list[Preprocessing]) -> tuple[Preprocessing, list[Derivation]]:
    """The decode's preprocessing for all models, and each model's :class:`Derivation` from its crop."""
    first = preprocessings[0]
    for index, prep in enumerate(preprocessings):
        if prep.resize_mode != first.resize_mode:
            raise ConfigError(
                f"models[{index}]",
                prep.resize_mode,
                f"its preprocessing resizes {prep.resize_mode!r}, models[0]'s {first.resize_mode!r}: "
                "one decode cannot serve both; run them separately",
            )
    fractions = [min(1.0, prep.crop_size / prep.resize_size) for prep in preprocessings]
    widest = max(fractions)
    # Pixels of the decoded crop so that every model's square holds at least its crop_size.
    needs = [
        math.ceil(prep.crop_size * widest / fraction)
        for prep, fraction in zip(preprocessings, fractions, strict=True)
    ]
    crop = max(needs)
    owner = next(
        (
            prep
            for prep, fraction in zip(preprocessings, fractions, strict=True)
            if fraction == widest and prep.crop_size == crop
        ),
        None,
    )
    decoded = owner or replace(
        preprocessings[fractions.index(widest)], crop_size=crop, resize_size=round(crop / widest)
    )
    derivations = [
        Derivation(min(crop, round(crop * fraction / widest)), prep.crop_size, prep.interpolation)
        for prep, fraction in zip(preprocessings, fractions, strict=True)
    ]
    return decoded, derivations


def derive(crops: np.ndarray, derivation: Derivation) -> np.ndarray:
    """One model's uint8 NHWC inputs from the shared crops (untouched where it is the identity)."""
    if derivation.identity or not len(crops):
        return crops
    import torch
    import torch.nn.functional as F  # noqa: N812  # torch's own spelling

    side = crops.shape[1]
    start = (side - derivation.square) // 2
    square = crops[:, start : start + derivation.square, start : start + derivation.square]
    batch = torch.from_numpy(np.ascontiguousarray(square)).permute(0, 3, 1, 2).to(torch.float32)
    mode = derivation.interpolation
    resized = F.interpolate(
        batch,
        size=(derivation.size, derivation.size),
        mode=mode,
        antialias=mode != "nearest",
        **({} if mode == "nearest" else {"align_corners": False}),
    )
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
