"""Where a model comes from: one module per library, each turning ``model:`` into a :class:`LoadedModel`.

``model.source`` picks the module (torchvision, timm, huggingface, open_clip, exported). Each
one reads what the job needs (:func:`read_weights`: one file or a saved directory, every file
checksummed and pinned by ``model.sha256``), resolves the model on the driver (its
preprocessing, labels or embedding size, the weights checked against the architecture) and,
on each inference actor, builds the ``torch.nn.Module`` that maps a normalised NCHW float
batch to logits (classify) or vectors (embed). The actor and the predictor see only the
:class:`LoadedModel`, never the library.

A source's library is optional: a source whose library is missing is refused before any
work with the extra to install (:func:`require`), never an ImportError.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, cast

from pipeline.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch

    from pipeline.compute.model import ModelSpec, Preprocessing, Weights
    from pipeline.config import ModelConfig, PreprocessConfig, StorageConfig

#: ``model.source`` -> its module under pipeline.compute.sources.
SOURCES = {
    "torchvision": "torchvision_source",
    "timm": "timm_source",
    "huggingface": "huggingface_source",
    "open_clip": "open_clip_source",
    "exported": "exported_source",
}


class Source(Protocol):
    """What each module under pipeline.compute.sources provides."""

    LIBRARY: str  # the module it imports
    DISTRIBUTION: str  # its name on PyPI, for the versions the manifest records
    EXTRA: str | None  # the pipeline extra that installs it (None: a main dependency)

    def check(self, model: ModelConfig) -> None:
        """Refuse, before any work, a ``model:`` section this source cannot load (ConfigError)."""

    def read(self, model: ModelConfig, storage: StorageConfig | None) -> Weights:
        """The files the model is built from, read once per run and checksummed."""

    def resolve(
        self,
        model: ModelConfig,
        preprocess: PreprocessConfig,
        weights: Weights,
        storage: StorageConfig | None,
    ) -> LoadedModel:
        """The model checked on the driver, with what the actors need to build it."""

    def build(self, spec: ModelSpec, payload: Any) -> torch.nn.Module:
        """On an actor: the module (eval mode, fp32, on the CPU) from the spec and the payload."""

    def offers(self) -> list[str]:
        """What ``pipeline models`` lists for this source."""


@dataclass(frozen=True)
class LoadedModel:
    """A model as the job runs it, whatever its library.

    ``spec``: small and picklable (names, preprocessing, labels or embedding size, files and
    their sha256, versions: the manifest's model entry). ``payload``: what the source builds
    the module from (a state dict, a saved directory's files, an exported program's bytes;
    None: random init), sent once to the actors through the object store.
    """

    spec: ModelSpec
    payload: Any

    def build(self) -> torch.nn.Module:
        """The module, as :func:`build_module` makes it."""
        return build_module(self.spec, self.payload)

    def manifest_entry(self) -> dict[str, Any]:
        """The model as ``_SUCCESS`` records it."""
        return self.spec.manifest_entry()


def source_module(name: str) -> Source:
    """The module of ``model.source`` ``name`` (its library is not imported here)."""
    if name not in SOURCES:
        raise ConfigError("model.source", name, f"one of {', '.join(SOURCES)}")
    return cast("Source", importlib.import_module(f"{__name__}.{SOURCES[name]}"))


def missing_library(name: str) -> str | None:
    """Why source ``name`` cannot run here (its library is not installed, and how to install it), or None."""
    source = source_module(name)
    try:
        importlib.import_module(source.LIBRARY)
    except ImportError as exc:
        extra = (
            f"pip install 'pipeline[{source.EXTRA}]'"
            if source.EXTRA
            else f"pip install {source.DISTRIBUTION}"
        )
        return f"needs the {source.DISTRIBUTION} library, which is not installed here ({exc.name}): {extra}"
    return None


def require(name: str) -> Source:
    """The module of source ``name``, its library importable; else ConfigError naming the extra."""
    why = missing_library(name)
    if why is not None:
        raise ConfigError("model.source", name, why)
    return source_module(name)


def check_model(model: ModelConfig) -> None:
    """The source's own config checks, and its library present: before any work, exit 2."""
    require(model.source).check(model)


def read_weights(model: ModelConfig, storage: StorageConfig | None = None) -> Weights:
    """What ``model.source`` reads, once per run; ``model.sha256`` refuses other bytes."""
    return require(model.source).read(model, storage)


def resolve(
    model: ModelConfig,
    preprocess: PreprocessConfig,
    storage: StorageConfig | None = None,
    weights: Weights | None = None,
) -> LoadedModel:
    """The model checked on the driver before any Ray work; ``weights`` as :func:`read_weights` read them."""
    source = require(model.source)
    loaded = source.resolve(model, preprocess, weights or source.read(model, storage), storage)
    return LoadedModel(
        replace(loaded.spec, source=model.source, versions=versions(source.DISTRIBUTION)),
        loaded.payload,
    )


def resolve_spec(
    model: ModelConfig,
    preprocess: PreprocessConfig,
    storage: StorageConfig | None = None,
    weights: Weights | None = None,
) -> tuple[ModelSpec, Any]:
    """:func:`resolve` as the spec and the payload."""
    loaded = resolve(model, preprocess, storage, weights)
    return loaded.spec, loaded.payload


def build_module(spec: ModelSpec, payload: Any) -> torch.nn.Module:
    """The module of ``spec`` (eval mode, no gradients, fp32): normalised NCHW in, logits or vectors out.

    Each source puts its module in eval mode itself: an exported program has no train mode to leave.
    """
    import torch

    module = source_module(spec.source).build(spec, payload)
    for parameter in module.parameters():
        parameter.requires_grad = False
    result: torch.nn.Module = module.to(torch.float32)
    return result


def versions(*distributions: str) -> tuple[tuple[str, str], ...]:
    """(name, version) of torch and the given installed distributions, for the manifest."""
    found = []
    for name in ("torch", *distributions):
        try:
            found.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(dict(found).items())


def with_overrides(resolved: Preprocessing, preprocess: PreprocessConfig) -> Preprocessing:
    """The source's own preprocessing, with each ``preprocess`` key that is set taking its place."""
    return replace(
        resolved,
        resize_size=preprocess.resize_size or resolved.resize_size,
        crop_size=preprocess.crop_size or resolved.crop_size,
        mean=preprocess.mean or resolved.mean,
        std=preprocess.std or resolved.std,
        interpolation=preprocess.interpolation or resolved.interpolation,
    )


def label_names(
    model: ModelConfig, count: int, own: list[str] | None, storage: StorageConfig | None
) -> tuple[str, ...]:
    """``count`` class names: ``model.labels``'s lines (exactly ``count``), the library's, or class_<i>."""
    from pipeline.compute.model import read_label_file

    if model.labels is not None:
        names = read_label_file(model.labels, storage)
        if len(names) != count:
            raise ModelError(
                f"config key 'model.labels': {model.labels} has {len(names)} labels, the model {count}"
            )
        return tuple(names)
    if own is not None and len(own) == count:
        return tuple(own)
    return tuple(f"class_{index}" for index in range(count))


def interpolation_name(value: object) -> str:
    """A library's resampling (a name, a PIL code, an enum) as the decode stage names it."""
    names = {
        "bilinear": "bilinear",
        "bicubic": "bicubic",
        "nearest": "nearest",
        "0": "nearest",
        "2": "bilinear",
    }
    names["3"] = "bicubic"
    text = str(getattr(value, "value", value)).lower().removeprefix("interpolationmode.")
    if text not in names:
        raise ModelError(
            f"the model's preprocessing resamples with {value!r}: the decode stage has bilinear, "
            "bicubic and nearest"
        )
    return names[text]
