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
from typing import Any

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


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _save(image: Image.Image, path: Path, **options: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def hostile_corpus(root: Path, *, seed: int = 7) -> dict[str, tuple[str, str | None]]:
    """Every kind of awkward input we promise to handle, and its expected (status, reason).

    Keys are file names under ``root``. Files that must not exist or cannot be read
    (``vanished.jpg``) are listed but not written: give them to the job through a manifest.
    """
    rng = np.random.default_rng(seed)
    base = photo_like(rng, 400, 300)
    expected: dict[str, tuple[str, str | None]] = {}

    def ok(name: str) -> None:
        expected[name] = ("ok", None)

    def failed(name: str, reason: str) -> None:
        expected[name] = ("failed", reason)

    root.mkdir(parents=True, exist_ok=True)
    (root / "zero-byte.jpg").write_bytes(b"")
    failed("zero-byte.jpg", "empty_file")
    (root / "truncated.jpg").write_bytes(jpeg_bytes(base)[:3000])
    failed("truncated.jpg", "truncated")
    (root / "random-bytes.jpg").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    failed("random-bytes.jpg", "not_an_image")
    (root / "text.jpg").write_text("<html>not found</html>\n")
    failed("text.jpg", "not_an_image")
    (root / "bomb.png").write_bytes(_png_with_declared_size(60_000, 60_000))
    failed("bomb.png", "too_many_pixels")
    failed("vanished.jpg", "not_found")

    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    _save(rgba, root / "alpha.png")
    ok("alpha.png")
    sixteen = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    _save(sixteen, root / "gray16.png")
    ok("gray16.png")
    _save(base.convert("L"), root / "gray.jpg", quality=90)
    ok("gray.jpg")
    _save(base.convert("P", palette=Image.Palette.ADAPTIVE), root / "palette.png")
    ok("palette.png")
    _save(base.convert("CMYK"), root / "cmyk.jpg", quality=90)
    ok("cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _save(base, root / "exif-rotated.jpg", quality=95, exif=exif.tobytes())
    ok("exif-rotated.jpg")
    frames = [base, photo_like(rng, 400, 300), photo_like(rng, 400, 300)]
    _save(frames[0], root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    ok("animated.gif")
    _save(base, root / "photo.webp", quality=90)
    ok("photo.webp")
    return expected
