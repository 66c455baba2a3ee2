"""Building a torchvision classifier (or the embedder inside it) and loading weights we can trust.

:class:`ModelSpec` and the reading and pinning of weights (one file, or the files of a saved
folder) serve every ``model.source`` (:mod:`pipeline.compute.sources`); the rest is torchvision's.

Weights come from a local path or any fsspec URI (``s3://...``), as safetensors or
as a torch file loaded with ``weights_only=True`` (never arbitrary pickle), however the
training loop saved them (:mod:`pipeline.compute.checkpoints`). An optional sha256 pin refuses a
file that changed. Preprocessing parameters and labels follow the chosen architecture's
documented default weights.

``model.task: embed`` takes the vector the classifier's final Linear receives: that
Linear becomes an identity, so the model returns its input (:func:`final_linear`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.compute import checkpoints
from pipeline.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch

    from pipeline.config import ModelConfig, PreprocessConfig, StorageConfig

RANDOM_INIT = "random-init"  # the weights' "checksum" of a demo run (model.random_init)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.cache
def known_architectures() -> frozenset[str]:
    """Names of torchvision's image classification architectures."""
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def check_architecture(name: str) -> None:
    """Refuse a ``model.name`` torchvision does not know (exit 2, before any work)."""
    if name not in known_architectures():
        raise ConfigError(
            "model.name", name, "not a torchvision classification model; see `pipeline models` for the list"
        )


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input; resolved once on the driver."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str = "shorter"  # or squash (pipeline.compute.decode.resize_geometry)


@dataclass(frozen=True)
class Embedding:
    """What ``model.task: embed`` writes per image: ``dim`` values of ``dtype``, unit length if normalized."""

    dim: int
    dtype: str = "float32"
    normalized: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """Everything an inference actor needs to rebuild the model, and what the manifest records."""

    name: str
    num_classes: int
    weights_uri: str | None
    weights_sha256: str
    random_init: bool
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    embedding: Embedding | None = None  # None: classify
    source: str = "torchvision"  # the library that builds it (pipeline.compute.sources)
    files: tuple[tuple[str, str], ...] = ()  # (path, sha256) of every file read
    versions: tuple[tuple[str, str], ...] = ()  # (library, version) of the libraries that build it
    #: What the source needs on the actor beside the payload (OpenCLIP's prompts), as JSON-able pairs.
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def task(self) -> str:
        """``classify`` or ``embed``."""
        return "classify" if self.embedding is None else "embed"

    def manifest_entry(self) -> dict[str, Any]:
        """The model as ``_SUCCESS`` records it: what ran, from which weights, how preprocessed."""
        return {
            "name": self.name,
            "sha256": self.weights_sha256,
            "weights": self.weights_uri,
            "random_init": self.random_init,
            "preprocessing": asdict(self.preprocessing),
            "task": self.task,
            "embedding": asdict(self.embedding) if self.embedding else None,  # dim, dtype, normalized
            "source": self.source,
            "files": [{"path": path, "sha256": digest} for path, digest in self.files],
            "versions": dict(self.versions),
        }


def _default_weights_meta(
    name: str, weights_name: str | None = None
) -> tuple[Preprocessing, list[str] | None]:
    """Transforms and categories of the named torchvision weights, else the architecture's DEFAULT."""
    import torchvision

    if weights_name is not None:
        try:
            chosen = torchvision.models.get_weight(weights_name)
        except (ValueError, AttributeError, KeyError, IndexError):
            known = [str(weights) for weights in torchvision.models.get_model_weights(name)]
            raise ConfigError(
                "model.preprocessing", weights_name, f"not torchvision weights of {name}: one of {known}"
            ) from None
    else:
        try:
            chosen = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, AttributeError, KeyError):
            return Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"), None
    transforms = chosen.transforms()
    resize = transforms.resize_size
    crop = transforms.crop_size
    preprocessing = Preprocessing(
        resize_size=int(resize[0] if isinstance(resize, list | tuple) else resize),
        crop_size=int(crop[0] if isinstance(crop, list | tuple) else crop),
        mean=tuple(float(v) for v in transforms.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in transforms.std),  # type: ignore[arg-type]
        interpolation=str(transforms.interpolation.value),
    )
    return preprocessing, list(chosen.meta.get("categories") or []) or None


def _read_uri(uri: str, storage_config: StorageConfig | None) -> bytes:
    from pipeline import storage
    from pipeline.config import StorageConfig

    config = storage_config or StorageConfig()
    fs = storage.fsspec_filesystem(uri, config)
    try:
        return bytes(fs.cat_file(storage.fs_path(storage.normalise(uri))))
    except FileNotFoundError as exc:
        raise ModelError(f"model weights not found at {uri}") from exc
    except Exception as exc:
        if storage.is_transient(exc):  # an outage, not a bad file: exit 4, and worth a retry
            raise storage.storage_error("read the model weights at", uri, exc, config) from exc
        if not storage.is_storage_error(exc):
            raise
        raise ModelError(f"model weights at {uri} could not be read: {storage.describe(exc)}") from exc


@dataclass(frozen=True)
class Weights:
    """The weights file's bytes (None: random init) and their sha256, read once per run on the driver.

    A directory (Hugging Face, OpenCLIP): ``contents`` holds each file read, by its path in the
    directory, and ``sha256`` is :func:`directory_digest` of them.
    """

    blob: bytes | None
    sha256: str
    contents: dict[str, bytes] | None = None
    path: str = "weights"  # the one file's URI, as the manifest names it

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        """(path, sha256) of each file read: the directory's, or the one weights file."""
        if self.contents is not None:
            return tuple(
                (path, hashlib.sha256(data).hexdigest()) for path, data in sorted(self.contents.items())
            )
        return () if self.blob is None else ((self.path, self.sha256),)


def directory_digest(contents: dict[str, bytes]) -> str:
    """What ``model.sha256`` pins for a directory: the sha256 of ``sha256sum``'s lines, sorted by path.

    The same as ``(cd DIR && sha256sum FILE... | sort -k2 | sha256sum)`` over the files read.
    """
    lines = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {path}\n" for path, data in sorted(contents.items())
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def list_directory(uri: str, storage_config: StorageConfig | None) -> list[str]:
    """The paths of the files under directory ``uri``, relative to it; [] when it is not a directory."""
    from pipeline import storage
    from pipeline.config import StorageConfig

    config = storage_config or StorageConfig()
    fs = storage.fsspec_filesystem(uri, config)
    root = storage.fs_path(storage.normalise(uri)).rstrip("/")
    try:
        if not fs.isdir(root):
            return []
        found = fs.find(root)
    except Exception as exc:
        if storage.is_transient(exc):
            raise storage.storage_error("list the model directory at", uri, exc, config) from exc
        raise
    return sorted(str(path)[len(root) :].lstrip("/") for path in found)


def read_files(uri: str, paths: list[str], pin: str | None, storage_config: StorageConfig | None) -> Weights:
    """Read ``paths`` under directory ``uri`` once, checksum them, refuse a pinned digest that differs."""
    contents = {path: _read_uri(f"{uri.rstrip('/')}/{path}", storage_config) for path in paths}
    digest = directory_digest(contents)
    if pin is not None and digest != pin.lower():
        raise ModelError(
            f"config key 'model.sha256': the files read from {uri} ({', '.join(paths)}) have sha256 "
            f"{digest} (computed as docs/weights.md says), expected {pin.lower()}; refusing to load them"
        )
    return Weights(None, digest, contents)


class CachedWeights(Protocol):
    """:func:`read_weights` behind ``functools.cache``: read once per run, dropped once loaded."""

    def __call__(self) -> Weights:
        """The weights, read on the first call."""

    def cache_clear(self) -> None:
        """Drop the bytes (the state dict holds the tensors from then on)."""


def read_weights(model: ModelConfig, storage_config: StorageConfig | None = None) -> Weights:
    """Read ``model.weights`` and checksum it; bytes other than a pinned ``model.sha256`` are refused."""
    if model.weights is None:
        return Weights(None, RANDOM_INIT)
    blob = _read_uri(model.weights, storage_config)
    digest = hashlib.sha256(blob).hexdigest()
    if model.sha256 is not None and digest != model.sha256.lower():
        raise ModelError(
            f"config key 'model.sha256': weights at {model.weights} have sha256 {digest}, "
            f"expected {model.sha256.lower()}; refusing to load them"
        )
    return Weights(blob, digest, path=model.weights)


def resolve_spec(
    model: ModelConfig,
    preprocess: PreprocessConfig,
    storage_config: StorageConfig | None = None,
    weights: Weights | None = None,
) -> tuple[ModelSpec, dict[str, torch.Tensor] | None]:
    """Check the weights on the driver (checksum, shape) before any Ray work.

    ``weights``: as :func:`read_weights` read them (once per run); None: read them here.
    Returns the spec and the verified state dict (``None`` for random init),
    so the caller can hand the tensors to the actors through the object store.
    """
    check_architecture(model.name)
    defaults, categories = _default_weights_meta(model.name, model.preprocessing)
    preprocessing = Preprocessing(
        resize_size=preprocess.resize_size or defaults.resize_size,
        crop_size=preprocess.crop_size or defaults.crop_size,
        mean=preprocess.mean or defaults.mean,
        std=preprocess.std or defaults.std,
        interpolation=preprocess.interpolation or defaults.interpolation,
    )
    embedding = None
    if model.task == "embed":
        embedding = Embedding(
            embedding_dim(model.name, model.num_classes), model.embedding_dtype, model.normalize
        )
    labels = _labels(model, categories, storage_config) if embedding is None else []
    state_dict = None
    weights = weights or read_weights(model, storage_config)
    if weights.blob is not None and model.weights is not None:
        # Named as the architecture names them, and loaded once here: it fails here, not on the cluster.
        state_dict = fit_weights(
            model, checkpoints.read_state_dict(weights.blob, model.weights), model.weights
        )
    spec = ModelSpec(
        name=model.name,
        num_classes=model.num_classes,
        weights_uri=model.weights,
        weights_sha256=weights.sha256,
        random_init=model.weights is None,
        labels=tuple(labels),
        preprocessing=preprocessing,
        embedding=embedding,
    )
    return spec, state_dict


def _labels(
    model: ModelConfig, categories: list[str] | None, storage_config: StorageConfig | None
) -> list[str]:
    if model.labels is not None:
        names = read_label_file(model.labels, storage_config)
        if len(names) != model.num_classes:
            raise ModelError(
                f"config key 'model.labels': {model.labels} has {len(names)} labels, "
                f"model.num_classes is {model.num_classes}"
            )
        return names
    if categories is not None and len(categories) == model.num_classes:
        return categories
    return [f"class_{index}" for index in range(model.num_classes)]


def read_label_file(uri: str, storage_config: StorageConfig | None) -> list[str]:
    """The labels of a file of one label a line (blank lines skipped)."""
    names = [line.strip() for line in _read_uri(uri, storage_config).decode().splitlines()]
    return [name for name in names if name]


def final_linear(module: torch.nn.Module, num_classes: int) -> tuple[str, torch.nn.Linear] | None:
    """The Linear the logits come from, and its dotted name: the last registered with ``num_classes`` outputs.

    Per family: ``fc`` (ResNet, ResNeXt, Wide ResNet, RegNet, GoogLeNet, Inception, ShuffleNet),
    ``classifier`` (DenseNet), the last Linear of ``classifier`` (ConvNeXt: after its LayerNorm
    and Flatten; EfficientNet, MobileNet V2, MNASNet: after Dropout; MobileNet V3, VGG,
    AlexNet, MaxViT: after the head's hidden Linear and activation), ``heads.head`` (ViT: the
    class token after the encoder's LayerNorm), ``head`` (Swin). Auxiliary classifiers are
    registered before the main one. None where the logits come from no Linear (SqueezeNet).
    """
    import torch

    found = None
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.Linear) and child.out_features == num_classes:
            found = (name, child)
    return found


@functools.cache
def embedding_dim(name: str, num_classes: int) -> int:
    """The length of ``name``'s embedding, from the architecture alone.

    Built on the meta device (no memory, no init) where the architecture allows, else on the CPU.
    """
    import torch
    import torchvision

    try:
        with torch.device("meta"):
            module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (NotImplementedError, RuntimeError):  # RegNet reads tensor values while it builds
        module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    found = final_linear(module, num_classes)
    if found is None:
        raise ConfigError(
            "model.task",
            "embed",
            f"{name}'s logits come from no Linear layer, so it has no vector before its classifier "
            "to write; use another architecture or model.task: classify",
        )
    return found[1].in_features


def fit_weights(
    model: ModelConfig, state_dict: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """``state_dict`` with the names ``model.name`` gives its tensors (``checkpoints.fit``), loaded once."""
    module, head = _architecture(model.name, model.num_classes, model.task)
    drop_head = model.task == "embed"
    return _load(module, head, state_dict, source, _described(model.name, model.num_classes), drop_head)


def _architecture(name: str, num_classes: int, task: str) -> tuple[torch.nn.Module, str | None]:
    """The architecture, random init, and its final Linear's name (for ``embed``: an identity there)."""
    import torch
    import torchvision

    try:
        module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"cannot build torchvision model {name!r}: {exc}") from exc
    found = final_linear(module, num_classes)
    if found is not None and task == "embed":
        parent, _, attribute = found[0].rpartition(".")
        setattr(module.get_submodule(parent), attribute, torch.nn.Identity())
    return module, None if found is None else found[0]


def _described(name: str, num_classes: int) -> str:
    """The architecture as the weights' messages name it."""
    return f"architecture {name!r} with {num_classes} classes"


def _load(
    module: torch.nn.Module,
    head: str | None,
    state_dict: dict[str, torch.Tensor],
    source: str | None,
    architecture: str,
    drop_head: bool,
) -> dict[str, torch.Tensor]:
    fitted = checkpoints.fit(
        state_dict,
        module.state_dict(),
        source=source,
        architecture=architecture,
        head=head,
        drop_head=drop_head,
    )
    module.load_state_dict(fitted, strict=True)
    return fitted


def build_model(
    name: str, num_classes: int, state_dict: dict[str, torch.Tensor] | None, task: str = "classify"
) -> torch.nn.Module:
    """The architecture with the given weights (random init when ``state_dict`` is None), in eval mode.

    ``task="embed"``: the final Linear (:func:`final_linear`) is an identity, so the model
    returns the vector that Linear would have received (and weights without that Linear fit).
    """
    import torch

    module, head = _architecture(name, num_classes, task)
    if state_dict is not None:
        _load(module, head, state_dict, None, _described(name, num_classes), task == "embed")
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad = False
    result: torch.nn.Module = module.to(torch.float32)
    return result
