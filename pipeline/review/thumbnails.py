"""Small pictures of a few inputs for the report, read the way the job reads them, and bounded.

Each source is read through :func:`pipeline.inputs.reading.fetch_all` (the job's own storage code:
local files, ``s3://`` through the ``storage.*`` settings, URLs), within :data:`MAX_BYTES`,
:data:`READ_TIMEOUT_S` and the run's ``input.allowed_roots`` and ``allowed_schemes``; at most
:data:`MAX_PICTURES` are read, and only pictures of at most :data:`MAX_PIXELS` are decoded. An
input that cannot be shown (deleted since the run, refused, undecodable) gets the reason in
words instead: a report never fails because of one picture.
"""

from __future__ import annotations

import base64
import io
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

from PIL import Image, ImageOps

from pipeline import storage
from pipeline.config import InputScheme
from pipeline.inputs import reading
from pipeline.schema import FailureReason

if TYPE_CHECKING:
    from pipeline.config import StorageConfig

MAX_PICTURES = 40  # per report: the lowest-confidence rows and the failed sample
MAX_BYTES = 32 * 1024 * 1024  # per source file
READ_TIMEOUT_S = 15.0  # per source file; reads run THREADS at a time
MAX_PIXELS = 50_000_000  # larger pictures are not decoded
THREADS = 8
SIDE = 192  # longest side of a thumbnail, in pixels
QUALITY = 80  # JPEG quality of the thumbnails


@dataclass(frozen=True)
class Thumbnail:
    """A picture as a ``data:`` URI, or why there is none."""

    uri: str
    data_uri: str | None
    note: str = ""


def thumbnails(
    uris: list[str],
    storage_config: StorageConfig,
    allowed_roots: list[str],
    allowed_schemes: list[str] | None = None,
) -> list[Thumbnail]:
    """A thumbnail (or the reason for none) of each of the first :data:`MAX_PICTURES` of ``uris``.

    Read within the run's ``input.allowed_roots`` and ``input.allowed_schemes`` (None: every
    scheme the job reads, ``file://`` included); URLs with the default ``http.*`` settings.
    """
    shown = uris[:MAX_PICTURES]
    if not shown:
        return []
    limits = reading.ReadLimits(
        max_bytes=MAX_BYTES,
        timeout_s=READ_TIMEOUT_S,
        allowed_roots=tuple(os.path.realpath(storage.normalise(root)) for root in allowed_roots),
        allowed_schemes=tuple(allowed_schemes or get_args(InputScheme)),
    )
    try:
        fetched = reading.fetch_all(storage.Filesystems(storage_config), shown, limits, THREADS)
    except Exception as exc:  # a storage failure past its retries: no picture, the report goes on
        return [Thumbnail(uri, None, f"not read: {storage.describe(exc)}") for uri in shown]
    found = []
    for uri, (data, reason, detail) in zip(shown, fetched, strict=True):
        if data is None:
            found.append(Thumbnail(uri, None, _not_read(reason, detail)))
            continue
        try:
            found.append(Thumbnail(uri, _data_uri(data)))
        except Exception as exc:  # any decoder error: this picture is not shown, that is all
            found.append(Thumbnail(uri, None, f"not decoded: {type(exc).__name__}: {str(exc)[:120]}"))
    return found


def _not_read(reason: FailureReason | None, detail: str) -> str:
    if reason == FailureReason.NOT_FOUND:
        return "not found: deleted or moved since the run"
    return f"not read: {reason} ({detail})" if detail else f"not read: {reason}"


def _data_uri(data: bytes) -> str:
    """``data`` as a JPEG thumbnail of at most :data:`SIDE` pixels, in a ``data:`` URI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF and palette notices of odd files
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            msg = f"{image.width}x{image.height} pixels, over {MAX_PIXELS:,}"
            raise ValueError(msg)
        image.draft("RGB", (SIDE, SIDE))  # JPEG: decode at a reduced scale
        small = ImageOps.exif_transpose(image).convert("RGB")
        small.thumbnail((SIDE, SIDE))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
