"""Bytes to a uint8 crop (H x W x 3), on CPU workers.

The crop stays uint8 until it reaches the inference device: a quarter of the
bytes of float32 through the object store. Large JPEGs are decoded at reduced
scale (``Image.draft``) when that still leaves the short side at least the
resize size. The resize and centre-crop geometry, shared with the device path, is
:func:`resize_geometry`. Any failure becomes a :class:`FailureReason`, never an exception.

With ``keep_jpeg`` (``preprocess.decode_device: gpu``) only the header is read
here: a baseline RGB or grey JPEG that needs no EXIF rotation is checked (size,
pixel limit) and left encoded for :mod:`pipeline.compute.device_decode`; everything else
is decoded here as before.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.schema import FailureReason

# We enforce our own pixel limit (config preprocess.max_image_pixels) from the
# header, before any pixel is allocated; PIL's global check would warn or raise
# with its own limit instead.
Image.MAX_IMAGE_PIXELS = None

_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class DecodeSettings:
    """What a decode worker needs; small and picklable."""

    resize_size: int
    crop_size: int
    interpolation: str
    max_image_pixels: int
    reduced_decode: bool
    keep_jpeg: bool = False
    # shorter: short side to resize_size, then the centre crop (torchvision, timm, OpenCLIP);
    # squash: both sides to resize_size, aspect not kept (Hugging Face's height/width processors).
    resize_mode: str = "shorter"


@dataclass(frozen=True)
class Decoded:
    """The result for one input: a crop, JPEG bytes left for the device, or a reason and a detail."""

    crop: np.ndarray | None
    reason: FailureReason | None = None
    detail: str = ""
    encoded: bytes | None = None


_EXIF_ORIENTATION = 0x0112


def device_decodable(image: Image.Image) -> bool:
    """True for what nvJPEG decodes as PIL would: baseline, RGB or grey, upright."""
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and not image.info.get("progressive")
        and not image.info.get("progression")
        and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.uint32)
        scale = 65535 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255  # noqa: PLR2004
        gray = (array * 255 // scale).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float32))
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def centre_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred ``crop``-sided square of a ``width`` x ``height`` image."""
    left, top = round((width - crop) / 2.0), round((height - crop) / 2.0)
    return left, top, left + crop, top + crop


def resize_geometry(
    width: int, height: int, settings: DecodeSettings
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Where resize-and-crop takes a ``width`` x ``height`` image, on the CPU and on the device alike.

    The (width, height) to resize to, short side to ``resize_size`` and the long side
    scaled with it (rounded down), as torchvision's ``Resize``; and the centre crop box
    in the resized image (:func:`centre_box`), as its ``CenterCrop``. The box reaches
    outside the image only when ``crop_size`` exceeds ``resize_size``. ``resize_mode``
    ``squash``: both sides to ``resize_size``, as Hugging Face's ``{"height", "width"}`` sizes.
    """
    if settings.resize_mode == "squash":
        square = (settings.resize_size, settings.resize_size)
        return square, centre_box(*square, settings.crop_size)
    short, long = (width, height) if width <= height else (height, width)
    new_short = settings.resize_size
    new_long = int(new_short * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    return size, centre_box(*size, settings.crop_size)


def resize_and_crop(image: Image.Image, settings: DecodeSettings) -> np.ndarray:
    """Short side to ``resize_size``, then a centre crop (:func:`resize_geometry`)."""
    size, box = resize_geometry(*image.size, settings)
    if size != image.size:
        image = image.resize(size, _INTERPOLATION.get(settings.interpolation, Image.Resampling.BILINEAR))
    if box[0] < 0 or box[1] < 0:  # the crop is larger than the image: pad it first
        crop = settings.crop_size
        width, height = image.size
        image = ImageOps.pad(image, (max(width, crop), max(height, crop)), color=(0, 0, 0))
        box = centre_box(*image.size, crop)
    return np.array(image.crop(box), dtype=np.uint8)  # owned, writable


def decode(data: bytes | None, settings: DecodeSettings) -> Decoded:
    """Decode one image to a ``crop_size`` x ``crop_size`` x 3 uint8 array."""
    if not data:
        return Decoded(None, FailureReason.EMPTY_FILE, "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > settings.max_image_pixels:
                return Decoded(
                    None,
                    FailureReason.TOO_MANY_PIXELS,
                    f"{width}x{height} exceeds preprocess.max_image_pixels={settings.max_image_pixels}",
                )
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            if settings.keep_jpeg and device_decodable(image):
                return Decoded(None, encoded=data)
            if settings.reduced_decode and image.format == "JPEG":
                scale = settings.resize_size / min(width, height)
                if scale < 1:
                    image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            image.load()
            image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(image)
            return Decoded(resize_and_crop(rgb, settings))
    except UnidentifiedImageError:
        return Decoded(None, FailureReason.NOT_AN_IMAGE, "not a recognised image format")
    except Image.DecompressionBombError as exc:
        return Decoded(None, FailureReason.TOO_MANY_PIXELS, str(exc)[:200])
    except (OSError, SyntaxError, EOFError) as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or isinstance(exc, EOFError):
            return Decoded(None, FailureReason.TRUNCATED, text[:200])
        return Decoded(None, FailureReason.DECODE_ERROR, f"{type(exc).__name__}: {text}"[:200])
    except Exception as exc:
        return Decoded(None, FailureReason.DECODE_ERROR, f"{type(exc).__name__}: {exc}"[:200])
