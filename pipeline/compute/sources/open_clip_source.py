"""``model.source: open_clip``: image embeddings, or zero-shot classification against label prompts.

``model.weights`` is a directory as OpenCLIP saves one (``open_clip_config.json`` and
``open_clip_model.safetensors``, the layout of its hub repositories), or one weights file
for the built-in architecture ``model.name`` (``ViT-B-32``...). Weights are read as safetensors
or with ``weights_only=True``, never a pickle. Preprocessing is the model's own preprocess
config (size, mean, std, interpolation, resize mode).

``classify`` is zero-shot: each label of ``model.labels`` is put into ``model.prompt_template``,
the prompts are tokenised with the tokenizer OpenCLIP ships and encoded once when the actor
starts; an image's logits are OpenCLIP's own, ``exp(logit_scale) * image @ text.T`` on unit
vectors (plus ``logit_bias`` where the model has one), so its scores are their softmax.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.compute import checkpoints
from pipeline.compute.model import Embedding, ModelSpec, Preprocessing, list_directory, read_files
from pipeline.compute.model import read_weights as read_one_file
from pipeline.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.compute.model import Weights
    from pipeline.compute.sources import LoadedModel
    from pipeline.config import ModelConfig, PreprocessConfig, StorageConfig

LIBRARY = "open_clip"
DISTRIBUTION = "open_clip_torch"
EXTRA = "open_clip"

CONFIG = "open_clip_config.json"
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # in the order looked for


def check(model: ModelConfig) -> None:
    """Without a directory, ``model.name`` must be an architecture OpenCLIP has built in."""
    import open_clip

    if model.weights is None and model.name not in open_clip.list_models():
        raise ConfigError(
            "model.name", model.name, "not an OpenCLIP architecture; see `pipeline models --source open_clip`"
        )


def read(model: ModelConfig, storage: StorageConfig | None) -> Weights:
    """A saved directory's config and weights, or the one weights file."""
    if model.weights is None:
        return read_one_file(model, storage)
    paths = list_directory(model.weights, storage)
    if not paths:
        return read_one_file(model, storage)
    chosen = next((name for name in WEIGHTS if name in paths), None)
    if CONFIG not in paths or chosen is None:
        raise ModelError(
            f"{model.weights} is not an OpenCLIP directory: it needs {CONFIG} and one of {', '.join(WEIGHTS)}"
        )
    return read_files(model.weights, [CONFIG, chosen], model.sha256, storage)


@contextmanager
def _created(name: str, config: dict[str, Any] | None) -> Iterator[tuple[Any, Any]]:
    """The model (random init) and its tokenizer, from a saved config or a built-in name."""
    import open_clip

    if config is None:
        yield open_clip.create_model(name, pretrained=None), open_clip.get_tokenizer(name)
        return
    with tempfile.TemporaryDirectory(prefix="pipeline-open-clip-") as folder:
        (Path(folder) / CONFIG).write_text(json.dumps(config), encoding="utf-8")
        where = f"local-dir:{folder}"  # the config alone: no weights there to load
        yield open_clip.create_model(where, load_weights=False), open_clip.get_tokenizer(where)


def preprocessing_of(clip: Any) -> Preprocessing:
    """OpenCLIP's eval transform for this model, as the decode stage does it."""
    from open_clip import get_model_preprocess_cfg

    from pipeline.compute.sources import interpolation_name

    config = get_model_preprocess_cfg(clip)
    size = config["size"]
    side = size if isinstance(size, int) else size[0]
    if not isinstance(size, int) and size[0] != size[1]:
        raise ModelError(f"OpenCLIP image size {size} is not square: the decode stage makes square crops")
    modes = {"shortest": "shorter", "squash": "squash"}
    mode = config.get("resize_mode", "shortest")
    if mode not in modes:
        raise ModelError(f"OpenCLIP resize_mode {mode!r} is not one the decode stage does (shortest, squash)")
    return Preprocessing(
        resize_size=int(side),
        crop_size=int(side),
        mean=tuple(float(v) for v in config["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in config["std"]),  # type: ignore[arg-type]
        interpolation=interpolation_name(config.get("interpolation", "bicubic")),
        resize_mode=modes[mode],
    )


def _state_dict(weights: Weights) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None]:
    """The saved config (None: a built-in architecture) and the weights' tensors (None: random init)."""
    if weights.contents is not None:
        config = json.loads(weights.contents[CONFIG])
        name = next(name for name in WEIGHTS if name in weights.contents)
        return config, checkpoints.read_state_dict(weights.contents[name], name)
    if weights.blob is None:
        return None, None
    return None, checkpoints.read_state_dict(weights.blob, weights.path)


def resolve(
    model: ModelConfig, preprocess: PreprocessConfig, weights: Weights, storage: StorageConfig | None
) -> LoadedModel:
    """Build the model once here: the weights must fit it; its preprocessing and embedding size."""
    from pipeline.compute.model import read_label_file
    from pipeline.compute.sources import LoadedModel, with_overrides

    config, state_dict = _state_dict(weights)
    with _created(model.name, config) as (clip, _):
        if state_dict is not None:
            state_dict = checkpoints.fit(
                state_dict,
                clip.state_dict(),
                source=model.weights,
                architecture=f"OpenCLIP {model.name}",
                head=None,
            )
            clip.load_state_dict(state_dict, strict=True)
        preprocessing = preprocessing_of(clip)
        dim = int(clip.visual.output_dim)
    embedding = Embedding(dim, model.embedding_dtype, model.normalize) if model.task == "embed" else None
    labels = () if embedding or model.labels is None else tuple(read_label_file(model.labels, storage))
    if model.task == "classify" and len(labels) < 2:  # noqa: PLR2004 - a choice needs two
        raise ModelError(
            f"config key 'model.labels': {model.labels} has {len(labels)} labels; zero-shot needs two or more"
        )
    spec = ModelSpec(
        name=model.name,
        num_classes=len(labels) if labels else dim,
        weights_uri=model.weights,
        weights_sha256=weights.sha256,
        random_init=weights.blob is None and weights.contents is None,
        labels=labels,
        preprocessing=with_overrides(preprocessing, preprocess),
        embedding=embedding,
        files=weights.files,
        options=(("prompt_template", model.prompt_template),),
    )
    # Random init has no payload: the predictor seeds it, so every actor holds the same weights.
    payload = None if config is None and state_dict is None else {"config": config, "state_dict": state_dict}
    return LoadedModel(spec, payload)


def prompts(labels: tuple[str, ...], template: str) -> list[str]:
    """The text each label is encoded from."""
    return [template.replace("{}", label) for label in labels]


def build(spec: ModelSpec, payload: Any) -> torch.nn.Module:
    """The image tower (embed), or it and the labels' text features, encoded once here (classify)."""
    payload = payload or {"config": None, "state_dict": None}
    with _created(spec.name, payload["config"]) as (clip, tokenizer):
        if payload["state_dict"] is not None:
            clip.load_state_dict(payload["state_dict"], strict=True)
        clip.eval()
        if spec.embedding is not None:
            return ImageTower(clip).eval()
        template = str(dict(spec.options)["prompt_template"])
        with torch.inference_mode():
            text = clip.encode_text(tokenizer(prompts(spec.labels, template)))
        return ZeroShot(clip, torch.nn.functional.normalize(text.float(), dim=-1).clone()).eval()


class ImageTower(torch.nn.Module):
    """OpenCLIP's image embedding."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``encode_image`` of normalised pixels."""
        return self.clip.encode_image(pixels)  # type: ignore[no-any-return]


class ZeroShot(torch.nn.Module):
    """OpenCLIP's image-text logits against text features encoded once."""

    def __init__(self, clip: Any, text: torch.Tensor) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("text", text)
        bias = getattr(clip, "logit_bias", None)
        self.bias = float(bias.item()) if bias is not None else 0.0
        self.scale = float(clip.logit_scale.exp().item())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``exp(logit_scale) * image @ text.T (+ logit_bias)`` on unit vectors."""
        image = torch.nn.functional.normalize(self.clip.encode_image(pixels), dim=-1)
        text = self.get_buffer("text")
        return self.scale * image @ text.to(image.dtype).T + self.bias


def offers() -> list[str]:
    """OpenCLIP's built-in architectures (a saved directory works too)."""
    import open_clip

    return list(open_clip.list_models())
