"""``model.source: timm``: any timm architecture by name, weights as a state dict or safetensors file.

timm's own ``pretrained_cfg`` (through its data-config resolver) gives the preprocessing:
``input_size`` is the crop, ``floor(crop / crop_pct)`` the resize, as timm's eval transform
does; ``preprocess.*`` keys that are set override it. ``embed`` is timm's pooled features
(``reset_classifier(0)``: the vector its head receives).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipeline.compute import checkpoints
from pipeline.compute.model import Embedding, ModelSpec, Preprocessing
from pipeline.compute.model import read_weights as read_one_file
from pipeline.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch

    from pipeline.compute.model import Weights
    from pipeline.compute.sources import LoadedModel
    from pipeline.config import ModelConfig, PreprocessConfig, StorageConfig

LIBRARY = "timm"
DISTRIBUTION = "timm"
EXTRA = "timm"


def check(model: ModelConfig) -> None:
    """``model.name`` must be an architecture timm has."""
    import timm

    if not timm.is_model(model.name):
        raise ConfigError(
            "model.name", model.name, "not a timm architecture; see `pipeline models --source timm`"
        )


def read(model: ModelConfig, storage: StorageConfig | None) -> Weights:
    """The one weights file (or nothing: random init)."""
    return read_one_file(model, storage)


def _create(name: str, num_classes: int, task: str) -> torch.nn.Module:
    import timm

    module: torch.nn.Module = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if task == "embed":
        module.reset_classifier(0)  # type: ignore[operator]  # the head becomes an identity
    return module


def preprocessing_of(module: torch.nn.Module) -> Preprocessing:
    """What timm's eval transform does for this model, as the decode stage does it."""
    from timm.data.config import resolve_model_data_config

    from pipeline.compute.sources import interpolation_name

    data = resolve_model_data_config(module)  # type: ignore[no-untyped-call]
    _, height, width = data["input_size"]
    if height != width:
        raise ModelError(f"the timm model's input is {height}x{width}: the decode stage makes square crops")
    mode = data.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise ModelError(f"timm's crop_mode {mode!r} is not one the decode stage does (center, squash)")
    return Preprocessing(
        resize_size=math.floor(height / (data.get("crop_pct") or 0.875)),
        crop_size=height,
        mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        interpolation=interpolation_name(data["interpolation"]),
        resize_mode="shorter" if mode == "center" else "squash",
    )


def resolve(
    model: ModelConfig, preprocess: PreprocessConfig, weights: Weights, storage: StorageConfig | None
) -> LoadedModel:
    """Build the architecture once here: its preprocessing, its head, and the weights fitted to it."""
    from pipeline.compute.sources import LoadedModel, label_names, with_overrides

    module = _create(model.name, model.num_classes, model.task)
    state_dict = None
    if weights.blob is not None:
        head = str(module.pretrained_cfg.get("classifier") or "") or None  # type: ignore[operator,union-attr]
        state_dict = checkpoints.fit(
            checkpoints.read_state_dict(weights.blob, weights.path),
            module.state_dict(),
            source=weights.path,
            architecture=f"timm architecture {model.name!r} with {model.num_classes} classes",
            head=head,
            drop_head=model.task == "embed",
        )
        module.load_state_dict(state_dict, strict=True)
    embedding = None
    if model.task == "embed":
        embedding = Embedding(int(module.num_features), model.embedding_dtype, model.normalize)  # type: ignore[arg-type]
    spec = ModelSpec(
        name=model.name,
        num_classes=model.num_classes,
        weights_uri=model.weights,
        weights_sha256=weights.sha256,
        random_init=weights.blob is None,
        labels=() if embedding else label_names(model, model.num_classes, None, storage),
        preprocessing=with_overrides(preprocessing_of(module), preprocess),
        embedding=embedding,
        files=weights.files,
    )
    return LoadedModel(replace(spec), state_dict)


def build(spec: ModelSpec, payload: Any) -> torch.nn.Module:
    """The architecture with the fitted state dict (random init when None)."""
    module = _create(spec.name, spec.num_classes, spec.task)
    if payload is not None:
        module.load_state_dict(payload, strict=True)
    return module.eval()


def offers() -> list[str]:
    """Timm's architectures."""
    import timm

    return list(timm.list_models())
