"""Plain single-process torch on the job's own crops: the oracle the job's rows are checked against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file

from pipeline.compute.decode import decode
from pipeline.compute.model import resolve_spec
from pipeline.run.placement import decode_settings


def reference_model(config, weights: Path) -> torch.nn.Module:
    """The configured architecture with ``weights`` loaded, in eval mode, fp32."""
    model = torchvision.models.get_model(config.model.name, weights=None, num_classes=1000)
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def reference_inputs(config, uris: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Each decodable input's normalised 1 x 3 x H x W tensor, from the job's decode and preprocessing."""
    spec, _ = resolve_spec(config.model, config.preprocess)
    settings = decode_settings(config, spec)
    mean = torch.tensor(spec.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.preprocessing.std).view(1, 3, 1, 1)
    for uri in uris:
        crop = decode(Path(uri).read_bytes(), settings).crop
        if crop is not None:
            x = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0).float() / 255.0
            yield uri, (x - mean) / std
