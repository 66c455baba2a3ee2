"""The config hash: the settings that change results, and the weights' bytes; a resume must match it.

:meth:`pipeline.config.Config.config_hash` says what is hashed and why.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config.sections import Config

#: Input keys newer than the first runs: hashed only when they differ from their default.
INPUT_KEYS_HASHED_WHEN_SET: dict[str, Any] = {
    "passthrough_columns": [],
    "format": "auto",
    "image_column": "image",
    "key_column": None,
}


#: What model.prompt_template is unless set: OpenCLIP's own zero-shot prompt for ImageNet.
DEFAULT_PROMPT_TEMPLATE = "a photo of a {}."


#: Model keys newer than the first runs: hashed only when they differ from their default, so a
#: torchvision config hashes as it did before models came from other libraries.
MODEL_KEYS_HASHED_WHEN_SET: dict[str, Any] = {
    "source": "torchvision",
    "prompt_template": DEFAULT_PROMPT_TEMPLATE,
}


#: Preprocessing settings that change the pixels the model sees (the rest are limits and tuning).
RESULT_PREPROCESS_KEYS = (
    "resize_size",
    "crop_size",
    "mean",
    "std",
    "interpolation",
    "reduced_decode",
    "decode_device",
)
#: Of those, the ones hashed only when set (None is "the model's own"), so older runs still resume.
PREPROCESS_KEYS_HASHED_WHEN_SET = ("mean", "std", "interpolation")


#: Model keys only one task reads: the other task's hash leaves them out.
TASK_ONLY_MODEL_KEYS = {
    "classify": ("labels", "top_k", "prompt_template"),
    "embed": ("task", "embedding_dtype", "normalize"),
}


#: The precision class a resume must keep: bf16 and fp16 give the same top-1 within tolerance.
PRECISION_CLASS = {"auto": "auto", "fp32": "fp32", "bf16": "mixed", "fp16": "mixed"}


def config_hash(config: Config, weights_sha256: str | None) -> str:
    """The hash of :meth:`pipeline.config.Config.config_hash`."""
    data = config.to_dict()
    if not data["models"]:  # models: newer than the first runs, hashed only when set
        data.pop("models")
    data["input"].pop("allowed_roots", None)
    data["input"].pop("allowed_schemes", None)
    # Which rows an incremental run carries, not what a row holds: a night that starts naming
    # the version column still builds on the night before.
    data["input"].pop("version_column", None)
    for key, default in INPUT_KEYS_HASHED_WHEN_SET.items():  # older runs still resume
        if data["input"][key] == default:
            data["input"].pop(key)
    other = "embed" if config.model.task == "classify" else "classify"
    for key in TASK_ONLY_MODEL_KEYS[other]:
        data["model"].pop(key)
    for key, default in MODEL_KEYS_HASHED_WHEN_SET.items():
        if data["model"].get(key, default) == default:
            data["model"].pop(key, None)
    results = {
        "input": data["input"],
        "model": data["model"],
        "preprocess": {
            key: data["preprocess"][key]
            for key in RESULT_PREPROCESS_KEYS
            if key not in PREPROCESS_KEYS_HASHED_WHEN_SET or data["preprocess"][key] is not None
        },
        "precision": PRECISION_CLASS[config.inference.precision],
    }
    if "models" in data:  # a run of several models: each model's own keys, output name and precision
        results["models"] = data["models"]
    if weights_sha256 is not None:
        results["weights_sha256"] = weights_sha256
    return hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()
