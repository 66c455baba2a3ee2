"""Weights files as people save them, read without running code from them.

:func:`read_state_dict` tells the format from the bytes, not the name (safetensors saved as
``model.bin`` is safetensors), loads torch files with ``weights_only=True``, and takes the
model's tensors out of a training-loop checkpoint (``{"epoch": ..., "model_state_dict": ...,
"optimizer": ...}``, Lightning's ``{"state_dict": ...}``). :func:`fit` then names the tensors
as the architecture does: a prefix on every key (``module.`` from DistributedDataParallel,
``model.`` from a Lightning module, ``_orig_mod.`` from ``torch.compile``) is stripped and
logged; for ``model.task: embed`` the classifier head is dropped (a headless backbone fits);
anything else that does not fit is said in a few lines naming the first keys that differ.
Nothing here ever suggests loading a file with ``weights_only=False``.
"""

from __future__ import annotations

import io
import json
import re
from typing import TYPE_CHECKING, Any, TypeGuard

from pipeline.errors import ModelError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch

#: Where training loops keep the model's tensors, in the order they are looked for.
STATE_DICT_KEYS = ("model", "model_state_dict", "state_dict")
#: Prefixes wrappers put on every key: DistributedDataParallel, a Lightning module, torch.compile.
WRAPPER_PREFIXES = {
    "module.": "DistributedDataParallel",
    "model.": "Lightning",
    "_orig_mod.": "torch.compile",
}
NAMED = 3  # keys named per kind of difference
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_ZIP, _PICKLE_V2 = b"PK\x03\x04", b"\x80\x02"  # torch.save's zip format; its older pickle format


def read_state_dict(blob: bytes, uri: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors or a torch file, told apart by their first bytes."""
    if _is_safetensors(blob):
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(blob)
        except Exception as exc:
            raise ModelError(f"{uri} is a damaged safetensors file: {exc}") from exc
    if not blob.startswith((_ZIP, _PICKLE_V2)):
        raise ModelError(
            f"{uri} is neither a safetensors file nor a torch file (it starts with {blob[:8]!r}): "
            "save the model's state dict with safetensors.torch.save_file or torch.save (docs/weights.md)"
        )
    import torch

    try:
        loaded = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(_refusal(uri, str(exc))) from exc
    return _tensors_of(loaded, uri)


def _is_safetensors(blob: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then that many bytes of JSON."""
    size = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else 0  # noqa: PLR2004 - the length field
    if not 2 <= size <= len(blob) - 8 or blob[8:9] != b"{":  # noqa: PLR2004 - "{}" at least
        return False
    try:
        return isinstance(json.loads(blob[8 : 8 + size]), dict)
    except ValueError:
        return False


def _refusal(uri: str, message: str) -> str:
    """Why a torch file was refused and what to do, in our words (never torch's unsafe advice)."""
    found = _UNSUPPORTED_GLOBAL.search(message)
    if found and found.group(1).startswith(("torchvision.models.", "torch.nn.")):
        return (
            f"{uri} holds a whole pickled model ({found.group(1)}), not a state dict: loading it "
            "would run code from the file, so it is refused. Save its weights instead, with "
            "torch.save(model.state_dict(), 'weights.pth') or safetensors.torch.save_file("
            "model.state_dict(), 'weights.safetensors'), and point model.weights at that file "
            "(docs/weights.md)"
        )
    held = f" an object of type {found.group(1)}" if found else " something other than tensors"
    return (
        f"{uri} could not be read as a torch state dict with weights_only=True: it holds{held}, "
        "and loading that would run code from the file. Save the model's state dict alone, with "
        "torch.save(model.state_dict(), 'weights.pth') or safetensors (docs/weights.md)"
    )


def _is_state_dict(value: object) -> TypeGuard[dict[str, torch.Tensor]]:
    import torch

    return (
        isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _tensors_of(loaded: object, uri: str) -> dict[str, torch.Tensor]:
    """A state dict, or the one a training-loop checkpoint keeps under :data:`STATE_DICT_KEYS`."""
    if _is_state_dict(loaded):
        return dict(loaded)
    if not isinstance(loaded, dict):
        raise ModelError(f"{uri} holds a {type(loaded).__name__}, not a state dict of tensors")
    found = [key for key in STATE_DICT_KEYS if _is_state_dict(loaded.get(key))]
    if len(found) == 1:
        from pipeline.ops.logs import get_logger

        get_logger(stage="driver").info(
            "weights taken from a training checkpoint", key=found[0], other_keys=sorted(map(str, loaded))
        )
        chosen = loaded[found[0]]
        assert _is_state_dict(chosen)  # noqa: S101  # found says so; narrows the type
        return dict(chosen)
    held = ", ".join(f"{key} ({_kind(value)})" for key, value in loaded.items())
    which = (
        f"both {' and '.join(found)} hold tensors" if found else f"none of {', '.join(STATE_DICT_KEYS)} does"
    )
    raise ModelError(
        f"{uri} is a checkpoint of {held}; the model's tensors are taken from "
        f"{' or '.join(STATE_DICT_KEYS)} when exactly one holds them, but {which}. Save the one you "
        "mean alone, e.g. torch.save(checkpoint['model'], 'weights.pth')"
    )


def _kind(value: object) -> str:
    if _is_state_dict(value):
        return f"{len(value)} tensors"
    return type(value).__name__


def fit(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    source: str | None,
    architecture: str,
    head: str | None,
    drop_head: bool = False,
) -> dict[str, torch.Tensor]:
    """``state_dict`` named as ``expected`` (the architecture's own) names its tensors, or ModelError.

    ``source``: the file's URI, for messages (None: said as "the checkpoint").
    ``head``: the classifier's final Linear (``fc``, ``classifier.1``); with ``drop_head``
    (``model.task: embed``, whose model has an identity there) its tensors are left out,
    and a file without them fits.
    """
    fitted = _strip_wrapper_prefixes(dict(state_dict), set(expected), source)
    if drop_head and head is not None:
        fitted = {key: value for key, value in fitted.items() if not _under(key, head)}
    if any(_differences(fitted, expected)):
        raise ModelError(_mismatch(source, architecture, head, fitted, expected))
    return fitted


def _differences(
    fitted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """The keys missing from ``fitted``, those it has beyond ``expected``, and those of another shape."""
    missing = [key for key in expected if key not in fitted]
    unexpected = [key for key in fitted if key not in expected]
    reshaped = [
        key for key in expected if key in fitted and tuple(fitted[key].shape) != tuple(expected[key].shape)
    ]
    return missing, unexpected, reshaped


def _under(key: str, module: str) -> bool:
    return key == module or key.startswith(f"{module}.")


def _strip_wrapper_prefixes(
    state_dict: dict[str, Any], expected: set[str], source: str | None
) -> dict[str, Any]:
    """Strip a wrapper's prefix while every key has it and the architecture's keys do not; log it."""
    stripped = []
    while set(state_dict) != expected:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None or all(key.startswith(prefix) for key in expected):  # the model's own name
            break
        state_dict = {key.removeprefix(prefix): value for key, value in state_dict.items()}
        stripped.append(prefix)
    if stripped:
        from pipeline.ops.logs import get_logger

        get_logger(stage="driver").info(
            "weights' keys had a wrapper's prefix: stripped",
            weights=source,
            prefixes=stripped,
            saved_by=[WRAPPER_PREFIXES[prefix] for prefix in stripped],
        )
    return state_dict


def _mismatch(
    source: str | None,
    architecture: str,
    head: str | None,
    fitted: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
) -> str:
    """A few lines: how many keys differ, the first of each kind, and what to do."""
    missing, unexpected, reshaped = _differences(fitted, expected)

    def named(keys: list[str], what: str) -> str:
        more = ", ..." if len(keys) > NAMED else ""
        return f"{len(keys)} {what} ({', '.join(keys[:NAMED])}{more})"

    def shape(tensor: torch.Tensor) -> str:
        return "x".join(map(str, tensor.shape)) or "scalar"

    parts = [named(missing, "missing"), named(unexpected, "unexpected")]
    parts = [part for part, keys in zip(parts, (missing, unexpected), strict=True) if keys]
    if reshaped:
        first = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape ({first}: {shape(fitted[first])} in the file, "
            f"{shape(expected[first])} in the model)"
        )
    differing = missing + unexpected + reshaped
    if head is not None and all(_under(key, head) for key in differing):
        if not missing and not unexpected and f"{head}.weight" in reshaped:
            outputs = fitted[f"{head}.weight"].shape[0]
            advice = f"the file's head has {outputs} outputs: set model.num_classes to {outputs}"
        else:
            advice = (
                f"only the classifier head differs: this pipeline builds torchvision's {architecture} "
                f"head ({head}, one Linear); save weights with that head (e.g. the final Linear's "
                f"weights as {head}.weight and {head}.bias), or use model.task: embed, which does not "
                "use the head"
            )
    else:
        advice = "is it a checkpoint of this architecture? model.name must be the one it was trained as"
    what = f"checkpoint {source}" if source else "the checkpoint"
    return f"{what} does not match {architecture}: {'; '.join(parts)}. {advice[0].upper()}{advice[1:]}"
