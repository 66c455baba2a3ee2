"""``model.source: huggingface``: a directory ``save_pretrained`` wrote, or a hub id from the local cache.

``model.weights`` is the directory (local or on object storage); without it, ``model.name``
is a hub id resolved from the local Hugging Face cache only (``local_files_only``; the job
never downloads, docs/weights.md says how to pre-fetch). Only what loading needs is read
(``config.json``, ``preprocessor_config.json``, the ``*.safetensors`` weights and their index),
checksummed on the driver and sent to each actor, which writes it to a local folder of its own
once and loads it from there with ``AutoModelForImageClassification``.

Nothing from the directory runs: a ``config.json`` naming custom code (``auto_map``, a model
type transformers does not have) is refused rather than loaded with ``trust_remote_code``, and
weights only as pickles (``pytorch_model.bin``) are refused; safetensors hold tensors only.

Preprocessing is what ``preprocessor_config.json`` says, mapped onto the decode stage:
``size: {height, width}`` squashes to that square (ViT), ``size: {shortest_edge}`` resizes the
short side, with ``crop_pct`` (ConvNeXt) or ``crop_size`` the centre crop.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.compute.model import (
    Embedding,
    ModelSpec,
    Preprocessing,
    final_linear,
    list_directory,
    read_files,
)
from pipeline.errors import ModelError

if TYPE_CHECKING:
    from pipeline.compute.model import Weights
    from pipeline.compute.sources import LoadedModel
    from pipeline.config import ModelConfig, PreprocessConfig, StorageConfig

LIBRARY = "transformers"
DISTRIBUTION = "transformers"
EXTRA = "huggingface"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers or huggingface_hub read it
CONFIG, PREPROCESSOR = "config.json", "preprocessor_config.json"
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
RESCALE = 1 / 255


def check(model: ModelConfig) -> None:
    """Nothing beyond the library: the directory is checked when it is read."""
    del model


def _local_snapshot(name: str) -> str:
    """The cached snapshot of hub model ``name``; never a download."""
    from huggingface_hub import snapshot_download

    try:
        # The cache as this process's environment names it now (huggingface_hub reads it at import).
        return str(snapshot_download(name, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except Exception as exc:
        raise ModelError(
            f"Hugging Face model {name!r} is not in the local cache ({type(exc).__name__}); the job never "
            f"downloads: pre-fetch it with `hf download {name}` (docs/weights.md) or set model.weights "
            "to a directory written by save_pretrained"
        ) from exc


def wanted_files(paths: list[str], where: str) -> list[str]:
    """The files loading reads; a directory with pickled weights only is refused."""
    wanted = [
        path
        for path in paths
        if path in (CONFIG, PREPROCESSOR) or path.endswith((".safetensors", ".safetensors.index.json"))
    ]
    if CONFIG not in wanted:
        raise ModelError(
            f"{where} has no {CONFIG}: point model.weights at a directory written by save_pretrained"
        )
    if not any(path.endswith(".safetensors") for path in wanted):
        pickled = [path for path in paths if path.endswith(PICKLED)]
        held = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise ModelError(
            f"{where} holds {held}: loading a pickle can run code from the file, so the pipeline reads "
            "Hugging Face weights only as safetensors. Save with model.save_pretrained(dir) "
            "(safetensors is its default)"
        )
    return wanted


def read(model: ModelConfig, storage: StorageConfig | None) -> Weights:
    """The directory's config, preprocessing and safetensors files, read once and checksummed."""
    where = model.weights if model.weights is not None else _local_snapshot(model.name)
    paths = list_directory(where, storage)
    if not paths:
        raise ModelError(f"model weights not found at {where}: a directory written by save_pretrained")
    return read_files(where, wanted_files(paths, where), model.sha256, storage)


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse a config.json that names code from outside transformers."""
    from transformers import CONFIG_MAPPING

    if "auto_map" in config or config.get("model_type") not in CONFIG_MAPPING:
        custom = config.get("auto_map") or config.get("model_type")
        raise ModelError(
            f"{where}/{CONFIG} names custom code ({custom!r}), which only trust_remote_code would "
            "run: the pipeline never runs code from a model directory. Use an architecture "
            "transformers ships, or export the model (model.source: exported)"
        )


def preprocessing_of(processor: dict[str, Any], where: str) -> Preprocessing:
    """``preprocessor_config.json`` as the decode stage does it; what it cannot do is refused."""
    from pipeline.compute.sources import interpolation_name

    size = processor.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if not processor.get("do_resize", True) or not math.isclose(
        processor.get("rescale_factor", RESCALE), RESCALE
    ):
        raise ModelError(f"{where}/{PREPROCESSOR}: the decode stage always resizes and scales by 1/255")
    crop = processor.get("crop_size") or {}
    crop_side = crop.get("height") if isinstance(crop, dict) else crop
    if "height" in size and size["height"] == size.get("width"):
        resize, mode, crop_side = int(size["height"]), "squash", crop_side or size["height"]
    elif "shortest_edge" in size:
        resize, mode = int(size["shortest_edge"]), "shorter"
        if processor.get("crop_pct") is not None:  # ConvNeXt: resize to edge / crop_pct, crop to edge
            crop_side, resize = resize, int(resize / processor["crop_pct"])
    else:
        raise ModelError(f"{where}/{PREPROCESSOR}: size {size!r} is not a square nor a shortest edge")
    if not processor.get("do_center_crop", mode == "shorter" and crop_side is not None):
        crop_side = resize
    if not processor.get("do_normalize", True):
        raise ModelError(f"{where}/{PREPROCESSOR}: do_normalize false is not something the pipeline does")
    return Preprocessing(
        resize_size=resize,
        crop_size=int(crop_side or resize),
        mean=tuple(float(v) for v in processor["image_mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in processor["image_std"]),  # type: ignore[arg-type]
        interpolation=interpolation_name(processor.get("resample", 2)),
        resize_mode=mode,
    )


class PixelsToLogits(torch.nn.Module):
    """A transformers image model as a module of pixel values to its logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The ``logits`` of the model's output (embed: the head is an identity, so its input)."""
        return self.model(pixel_values=pixels).logits  # type: ignore[no-any-return]


def _module(model: torch.nn.Module, task: str, num_labels: int) -> torch.nn.Module:
    """The model as :class:`PixelsToLogits`; embed: its final Linear an identity (the vector it receives)."""
    if task == "embed":
        found = final_linear(model, num_labels)
        if found is None:
            raise ModelError(
                "the Hugging Face model has no final Linear with its num_labels outputs to embed before"
            )
        parent, _, attribute = found[0].rpartition(".")
        setattr(model.get_submodule(parent), attribute, torch.nn.Identity())
    return PixelsToLogits(model).eval()


def _load(contents: dict[str, bytes], folder: str) -> tuple[Any, dict[str, Any]]:
    """Write the files into ``folder`` and load them from there: offline, no remote code, safetensors only."""
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a bar per load, in every actor's log
    for path, data in contents.items():
        target = Path(folder) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    model, info = AutoModelForImageClassification.from_pretrained(
        folder,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        dtype=torch.float32,
        output_loading_info=True,
    )
    return model, info


def resolve(
    model: ModelConfig, preprocess: PreprocessConfig, weights: Weights, storage: StorageConfig | None
) -> LoadedModel:
    """Check the config, load the model once here (every weight must fit), and read its preprocessing."""
    from pipeline.compute.sources import LoadedModel, label_names, with_overrides

    contents = weights.contents or {}
    where = model.weights or model.name
    config = json.loads(contents[CONFIG])
    check_config(config, where)
    if PREPROCESSOR not in contents:
        raise ModelError(f"{where} has no {PREPROCESSOR}: save the image processor beside the model")
    with tempfile.TemporaryDirectory(prefix="pipeline-hf-") as folder:
        loaded, info = _load(contents, folder)
    num_labels = int(loaded.config.num_labels)
    head = final_linear(loaded, num_labels)
    problems = {
        key: list(info.get(key) or []) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if model.task == "embed" and head is not None:  # a headless checkpoint is fine for embed
        problems["missing_keys"] = [
            key for key in problems["missing_keys"] if not key.startswith(f"{head[0]}.")
        ]
    if any(problems.values()):
        found = "; ".join(
            f"{len(keys)} {name.replace('_', ' ')} ({', '.join(map(str, keys[:3]))})"
            for name, keys in problems.items()
            if keys
        )
        raise ModelError(f"the weights in {where} do not fit {config.get('architectures')}: {found}")
    embedding = None
    if model.task == "embed":
        if head is None:
            raise ModelError(f"{where}: no final Linear with {num_labels} outputs to embed before")
        embedding = Embedding(head[1].in_features, model.embedding_dtype, model.normalize)
    own = [str(loaded.config.id2label[index]) for index in range(num_labels)]
    spec = ModelSpec(
        name=model.name if model.weights is None else str((config.get("architectures") or [model.name])[0]),
        num_classes=num_labels,
        weights_uri=model.weights or f"hf-cache:{model.name}",
        weights_sha256=weights.sha256,
        random_init=False,
        labels=() if embedding else label_names(model, num_labels, own, storage),
        preprocessing=with_overrides(preprocessing_of(json.loads(contents[PREPROCESSOR]), where), preprocess),
        embedding=embedding,
        files=weights.files,
    )
    return LoadedModel(spec, contents)


def build(spec: ModelSpec, payload: Any) -> torch.nn.Module:
    """Load the directory's files from a folder of this actor's own, written once."""
    folder = tempfile.mkdtemp(prefix="pipeline-hf-")  # removed with the actor's temporary files
    model, _ = _load(payload, folder)
    return _module(model, spec.task, spec.num_classes)


def offers() -> list[str]:
    """The hub models in the local cache (any save_pretrained directory works too)."""
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir()
    except Exception:  # no cache yet
        return ["(a directory written by save_pretrained; no hub models cached here)"]
    return sorted(repo.repo_id for repo in cache.repos if repo.repo_type == "model")
