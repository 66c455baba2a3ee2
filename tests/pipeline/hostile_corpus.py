"""The hostile corpus: every kind of awkward input the job promises to turn into a row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.cli import samples


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
    base = samples.photo_like(rng, 400, 300)
    expected: dict[str, tuple[str, str | None]] = {}

    def ok(name: str) -> None:
        expected[name] = ("ok", None)

    def failed(name: str, reason: str) -> None:
        expected[name] = ("failed", reason)

    root.mkdir(parents=True, exist_ok=True)
    (root / "zero-byte.jpg").write_bytes(b"")
    failed("zero-byte.jpg", "empty_file")
    (root / "truncated.jpg").write_bytes(samples.jpeg_bytes(base)[:3000])
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
    frames = [base, samples.photo_like(rng, 400, 300), samples.photo_like(rng, 400, 300)]
    _save(frames[0], root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    ok("animated.gif")
    _save(base, root / "photo.webp", quality=90)
    ok("photo.webp")
    return expected
