"""Tiny models with random weights, each saved in its library's own format, as a user would hand them over.

One per ``model.source`` (torchvision, timm, Hugging Face, OpenCLIP, torch.export); each builder takes a
folder and returns what ``model.weights`` names. Libraries are imported inside the builders:
only the tests that need one pay for its import.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import torch

TIMM_MODEL = "test_resnet"  # timm's own test architecture: 0.4 M parameters, crop 160, mean/std 0.5
TIMM_CLASSES = 10
HF_LABELS = ("apple", "bear", "chair", "dolphin", "eagle")
CLIP_LABELS = ("cat", "dog", "bird", "car", "tree", "boat")
CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
# Exported programs carry no preprocessing: the config's keys say it.
EXPORTED_PREPROCESS = {"resize_size": 40, "crop_size": 32, "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3)}


def torchvision_weights(path: Path, name: str, seed: int) -> Path:
    """A torchvision ``name`` state dict (1000 classes), weights fixed by ``seed``, as safetensors."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, num_classes=1000)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def timm_weights(folder: Path, seed: int = 7) -> Path:
    """A timm ``test_resnet`` state dict, saved as safetensors."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=TIMM_CLASSES)
    path = folder / "timm.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def huggingface_dir(folder: Path, seed: int = 7) -> Path:
    """A ViT classifier from a small config, saved with ``save_pretrained`` beside its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(HF_LABELS)),
        label2id={label: index for index, label in enumerate(HF_LABELS)},
    )
    path = folder / "hf-vit"
    ViTForImageClassification(config).save_pretrained(path)
    # Not ViT's defaults (0.5): a pipeline that ignored the processor's mean and std would differ.
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.45, 0.5, 0.55], image_std=[0.2, 0.25, 0.3]
    ).save_pretrained(path)
    return path


def open_clip_dir(folder: Path, seed: int = 7) -> Path:
    """An OpenCLIP model from a small config, saved as its hub repositories are: config and safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    path = folder / "open-clip"
    path.mkdir()
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CONFIG, "preprocess_cfg": {}}))
    model = open_clip.create_model(f"local-dir:{path}", load_weights=False)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors")
    )
    return path


def labels_file(folder: Path, labels: tuple[str, ...]) -> Path:
    """A file of labels, one a line."""
    path = folder / "labels.txt"
    path.write_text("\n".join(labels) + "\n")
    return path


def small_net(outputs: int, seed: int = 7) -> torch.nn.Module:
    """A small convolutional net in eval mode (the model a user would export)."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, outputs),
    ).eval()


def exported_program(folder: Path, net: torch.nn.Module) -> Path:
    """``net`` exported with a dynamic batch dimension and saved with ``torch.export.save``."""
    import torch

    crop = int(EXPORTED_PREPROCESS["crop_size"])  # type: ignore[call-overload]
    example = (torch.zeros(2, 3, crop, crop),)
    program = torch.export.export(net, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = folder / "net.pt2"
    torch.export.save(program, path)
    return path
