"""Generated images: the demo's sample set, and the tests' and benchmarks' inputs.

Photo-like content without downloads: smooth colour fields, shapes, texture
and noise, at varied sizes and aspect ratios, saved as real JPEG/PNG files.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BROKEN_FILES = {
    "broken/empty.jpg": b"",
    "broken/not-an-image.jpg": b"this is a text file with a .jpg name\n",
}


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth, textured, shape-filled RGB image that compresses like a photo."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    direction = rng.uniform(-1, 1, size=(3, 2))
    field = np.stack(
        [base[c] + direction[c, 0] * x / width * 160 + direction[c, 1] * y / height * 160 for c in range(3)],
        axis=-1,
    )
    field += 25 * np.sin(x[..., None] / rng.uniform(8, 40) + rng.uniform(0, 6, size=3))
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = (
            x0 + int(rng.integers(10, max(11, width // 2))),
            y0 + int(rng.integers(10, max(11, height // 2))),
        )
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.integers(0, 2):
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
    noise = rng.normal(0, 6, size=(height, width, 3))
    return Image.fromarray(
        np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8), "RGB"
    )


def jpeg_bytes(image: Image.Image, quality: int = 88) -> bytes:
    """Encode as baseline JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_images(
    root: Path,
    count: int,
    *,
    seed: int = 0,
    sizes: tuple[tuple[int, int], ...] = (
        (320, 240),
        (640, 480),
        (500, 375),
        (800, 600),
        (1024, 768),
        (375, 500),
    ),
    png_every: int = 10,
    broken: bool = True,
) -> list[Path]:
    """Write ``count`` good images (JPEG, every ``png_every``-th PNG) plus broken files; return all paths."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        image = photo_like(rng, width, height)
        folder = root / f"shard-{index % 4}"
        folder.mkdir(exist_ok=True)
        if png_every and index % png_every == png_every - 1:
            path = folder / f"img-{index:05d}.png"
            image.save(path, format="PNG")
        else:
            path = folder / f"img-{index:05d}.jpg"
            path.write_bytes(jpeg_bytes(image))
        paths.append(path)
    if broken:
        for name, data in BROKEN_FILES.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(path)
        truncated = root / "broken/truncated.jpg"
        truncated.write_bytes(jpeg_bytes(photo_like(rng, 640, 480))[:4000])
        paths.append(truncated)
    return paths


IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480))


def _write_imagenet_sized(job: tuple[Path, int, int]) -> None:
    path, seed, index = job
    width, height = IMAGENET_SIZES[index % len(IMAGENET_SIZES)]
    path.write_bytes(jpeg_bytes(photo_like(np.random.default_rng((seed, index)), width, height)))


def imagenet_sized(root: Path, count: int, *, seed: int = 0, workers: int | None = None) -> list[Path]:
    """JPEGs at typical ImageNet sizes (around 500x375), for benchmarks, made on all cores.

    Image ``i`` comes from its own seed ``(seed, i)``: the files are the same whatever the
    number of workers. About 40 ms an image on one core, so 20,000 take a minute on 16.
    """
    paths = [root / f"shard-{index % 4}" / f"img-{index:05d}.jpg" for index in range(count)]
    for folder in {path.parent for path in paths}:
        folder.mkdir(parents=True, exist_ok=True)
    jobs = [(path, seed, index) for index, path in enumerate(paths)]
    workers = min(workers or os.cpu_count() or 1, max(1, count // 64))
    if workers == 1:
        for job in jobs:
            _write_imagenet_sized(job)
        return paths
    context = multiprocessing.get_context("spawn")  # the caller may hold threads (torch, Ray)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(_write_imagenet_sized, jobs, chunksize=32))
    return paths
