"""``model.source: exported``: a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``).

For a model whose training code must not follow it. The program is code: loading it
deserialises its graph (and any constant it pickled), and running it runs that graph, so
it is code the user trusts, exactly as the training code would be. Pin it with
``model.sha256`` (docs/weights.md): a file that changed is refused before it is loaded.

A graph says nothing about the pixels it was trained on, so the config spells them out
(``preprocess.resize_size``, ``crop_size``, ``mean``, ``std``, optionally ``interpolation``;
config/checks.py refuses a config without them). The program takes a normalised NCHW float
batch with a dynamic batch dimension and returns logits (classify) or vectors (embed): the
output's width is the class count or the embedding size.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from pipeline.compute.model import Embedding, ModelSpec, Preprocessing
from pipeline.compute.model import read_weights as read_one_file
from pipeline.errors import ModelError

if TYPE_CHECKING:
    import torch

    from pipeline.compute.model import Weights
    from pipeline.compute.sources import LoadedModel
    from pipeline.config import ModelConfig, PreprocessConfig, StorageConfig

LIBRARY = "torch"
DISTRIBUTION = "torch"
EXTRA = None
BATCHES_TRIED = (1, 3)  # two batch sizes: a program exported with a fixed batch fails one


def check(model: ModelConfig) -> None:
    """Nothing beyond config/checks.py: the program is checked when it is loaded."""
    del model


def read(model: ModelConfig, storage: StorageConfig | None) -> Weights:
    """The one ``.pt2`` file, pinned by ``model.sha256``."""
    return read_one_file(model, storage)


def load(blob: bytes, where: str) -> torch.nn.Module:
    """The program's module; loading runs code from the file (see the module's docstring)."""
    import torch

    try:
        program = torch.export.load(io.BytesIO(blob))
    except Exception as exc:
        raise ModelError(
            f"{where} is not a program saved by torch.export.save ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    module: torch.nn.Module = program.module()
    return module


def resolve(
    model: ModelConfig, preprocess: PreprocessConfig, weights: Weights, storage: StorageConfig | None
) -> LoadedModel:
    """Load the program once here and run it on blank batches: its output width, and a dynamic batch."""
    import torch

    from pipeline.compute.sources import LoadedModel, label_names

    resize, crop, mean, std = preprocess.resize_size, preprocess.crop_size, preprocess.mean, preprocess.std
    if weights.blob is None or resize is None or crop is None or mean is None or std is None:
        raise ModelError(
            "model.source exported needs model.weights and preprocess.resize_size, crop_size, mean and std"
        )
    module = load(weights.blob, weights.path)
    widths = set()
    for batch in BATCHES_TRIED:
        try:
            with torch.inference_mode():
                output = module(torch.zeros(batch, 3, crop, crop))
        except Exception as exc:
            raise ModelError(
                f"{weights.path} does not run on a {batch}x3x{crop}x{crop} batch ({type(exc).__name__}: "
                f"{str(exc)[:200]}): export it with a dynamic batch dimension "
                "(dynamic_shapes, docs/weights.md) and the crop size preprocess.crop_size gives"
            ) from exc
        if not isinstance(output, torch.Tensor) or output.dim() != 2:  # noqa: PLR2004 - rows x width
            raise ModelError(f"{weights.path} must return one 2-D tensor (rows x classes or x embedding)")
        widths.add(int(output.shape[1]))
    width = widths.pop()
    embedding = Embedding(width, model.embedding_dtype, model.normalize) if model.task == "embed" else None
    spec = ModelSpec(
        name=model.name,
        num_classes=width,
        weights_uri=model.weights,
        weights_sha256=weights.sha256,
        random_init=False,
        labels=() if embedding else label_names(model, width, None, storage),
        preprocessing=Preprocessing(
            resize_size=resize,
            crop_size=crop,
            mean=mean,
            std=std,
            interpolation=preprocess.interpolation or "bilinear",
        ),
        embedding=embedding,
        files=weights.files,
    )
    return LoadedModel(spec, weights.blob)


def build(spec: ModelSpec, payload: Any) -> torch.nn.Module:
    """The program's module, loaded from its bytes."""
    return load(payload, spec.weights_uri or spec.name)


def offers() -> list[str]:
    """Any program torch.export.save wrote."""
    return ["(any torch.export program saved with torch.export.save, as a .pt2 file)"]
