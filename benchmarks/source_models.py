"""``python -m benchmarks.source_models DIR``: save the models ``pipeline bench`` times per model.source.

timm and OpenCLIP build a named architecture with random weights themselves (``--source timm
--model resnet50``, ``--source open_clip --model ViT-B-32``); Hugging Face and exported programs
are read from files, so this writes them, with random weights, as their libraries save them:

- ``DIR/hf-vit-base``: a ViT-Base/16 classifier (1000 labels), ``save_pretrained`` beside its
  image processor (224 px, mean and std 0.5);
- ``DIR/resnet50.pt2``: torchvision's ResNet-50 through ``torch.export`` with a dynamic batch.

Prints the ``pipeline bench`` commands of docs/benchmarks.md's per-source table.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def save_huggingface(folder: Path) -> Path:
    """A random ViT-Base/16 classifier and its image processor, as save_pretrained writes them."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    path = folder / "hf-vit-base"
    config = ViTConfig(num_labels=1000)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(path)
    return path


def save_exported(folder: Path) -> Path:
    """Torchvision's ResNet-50 (random weights) exported with a dynamic batch dimension."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.zeros(2, 3, 224, 224),), dynamic_shapes=({0: batch},))
    path = folder / "resnet50.pt2"
    torch.export.save(program, path)
    return path


def main() -> None:
    """Save both models and print the bench commands."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args().folder
    folder.mkdir(parents=True, exist_ok=True)
    hf, exported = save_huggingface(folder), save_exported(folder)
    common = "pipeline bench --images 256 --precision fp32 --model-seconds 6 --naive-images 8"
    mean_std = "--set preprocess.mean=[0.485,0.456,0.406] --set preprocess.std=[0.229,0.224,0.225]"
    for line in (
        f"{common} --source torchvision --model resnet50",
        f"{common} --source timm --model resnet50",
        f"{common} --source huggingface --model vit-base --set model.weights={hf}",
        f"{common} --source open_clip --model ViT-B-32 --task embed",
        (
            f"{common} --source exported --model resnet50 --set model.weights={exported} "
            f"--set preprocess.resize_size=256 --set preprocess.crop_size=224 {mean_std}"
        ),
    ):
        print(line)


if __name__ == "__main__":
    main()
