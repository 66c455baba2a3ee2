"""JPEG decode on the inference device (``preprocess.decode_device: gpu``).

For clusters short of CPUs: the CPU workers only read each file's header
(:func:`pipeline.compute.decode.decode` with ``keep_jpeg``), and the inference actor
decodes the JPEGs of a batch in one call (nvJPEG through
``torchvision.io.decode_jpeg`` on CUDA, libjpeg-turbo when the actor has no
GPU), then resizes (antialiased) and centre-crops them on the device, with the
CPU path's size arithmetic (:func:`pipeline.compute.decode.resize_geometry`). A JPEG the
batched call refuses is tried alone, then decoded with PIL exactly as a CPU worker
would, so a bad file gets the same reason on either path.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from pipeline.compute.decode import Decoded, DecodeSettings, decode, resize_geometry
from pipeline.schema import ENCODING_JPEG, ENCODING_RAW, FailureReason

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch


def _decode_jpegs(blobs: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """C x H x W uint8 RGB per JPEG, None where the device decoder refuses one."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not blobs:
        return []
    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass  # one bad file fails the whole batched call: find it
    decoded: list[torch.Tensor | None] = []
    for one in data:
        try:
            decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            decoded.append(None)
    return decoded


def resize_and_crop(image: torch.Tensor, settings: DecodeSettings) -> torch.Tensor:
    """C x H x W uint8: short side to ``resize_size``, then a centre crop (the CPU path's geometry)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    height, width = image.shape[-2:]
    (new_width, new_height), (left, top, right, bottom) = resize_geometry(width, height, settings)
    if (new_width, new_height) != (width, height):
        mode = InterpolationMode(settings.interpolation)
        image = tvf.resize(image, [new_height, new_width], interpolation=mode, antialias=True)
    if left < 0 or top < 0:  # the crop is larger than the image: torchvision pads it
        padded: torch.Tensor = tvf.center_crop(image, [settings.crop_size, settings.crop_size])
        return padded
    return image[..., top:bottom, left:right]


def device_crops(
    blobs: Sequence[bytes], encodings: Sequence[str], settings: DecodeSettings, device: torch.device
) -> tuple[torch.Tensor, dict[int, Decoded]]:
    """N x H x W x 3 uint8 crops on ``device`` for the rows that decode, and the failures by row.

    ``encodings`` says per row what ``blobs`` holds: a JPEG, or a raw crop decoded on a
    CPU worker. The crops keep row order, failed rows left out.
    """
    import torch

    crop = settings.crop_size
    crops: list[torch.Tensor | None] = [None] * len(blobs)
    jpegs = [index for index, encoding in enumerate(encodings) if encoding == ENCODING_JPEG]
    failures: dict[int, Decoded] = {}
    for index, encoding in enumerate(encodings):
        if encoding == ENCODING_RAW:
            raw = torch.frombuffer(bytearray(blobs[index]), dtype=torch.uint8)
            crops[index] = raw.view(crop, crop, 3).to(device)
        elif encoding != ENCODING_JPEG:
            failures[index] = Decoded(None, FailureReason.DECODE_ERROR, f"no pixels (encoding {encoding!r})")
    on_cpu = replace(settings, keep_jpeg=False)
    for index, image in zip(jpegs, _decode_jpegs([blobs[i] for i in jpegs], device), strict=True):
        if image is not None:
            crops[index] = resize_and_crop(image, settings).permute(1, 2, 0)
            continue
        fallback = decode(blobs[index], on_cpu)
        if fallback.crop is None:
            failures[index] = fallback
        else:
            crops[index] = torch.from_numpy(fallback.crop).to(device)
    done = [image for image in crops if image is not None]
    if not done:
        return torch.zeros((0, crop, crop, 3), dtype=torch.uint8, device=device), failures
    return torch.stack(done), failures
