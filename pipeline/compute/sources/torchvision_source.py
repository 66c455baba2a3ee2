"""``model.source: torchvision``: a torchvision architecture and its state dict (:mod:`..model`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.compute import model as torchvision_model

if TYPE_CHECKING:
    import torch

    from pipeline.compute.model import ModelSpec, Weights
    from pipeline.compute.sources import LoadedModel
    from pipeline.config import ModelConfig, PreprocessConfig, StorageConfig

LIBRARY = "torchvision"
DISTRIBUTION = "torchvision"
EXTRA = None


def check(model: ModelConfig) -> None:
    """``model.name`` must be a torchvision classification architecture."""
    torchvision_model.check_architecture(model.name)


def read(model: ModelConfig, storage: StorageConfig | None) -> Weights:
    """The one weights file (or nothing: random init)."""
    return torchvision_model.read_weights(model, storage)


def resolve(
    model: ModelConfig, preprocess: PreprocessConfig, weights: Weights, storage: StorageConfig | None
) -> LoadedModel:
    """The architecture's documented preprocessing and labels, the weights fitted to it."""
    from dataclasses import replace

    from pipeline.compute.sources import LoadedModel

    spec, state_dict = torchvision_model.resolve_spec(model, preprocess, storage, weights)
    return LoadedModel(replace(spec, files=weights.files), state_dict)


def build(spec: ModelSpec, payload: Any) -> torch.nn.Module:
    """The architecture with the fitted state dict (random init when None)."""
    return torchvision_model.build_model(spec.name, spec.num_classes, payload, spec.task)


def offers() -> list[str]:
    """Torchvision's classification architectures."""
    return sorted(torchvision_model.known_architectures())
