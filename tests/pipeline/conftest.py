"""Fixtures of the pipeline tests that need more than tests/conftest.py: the loopback image server."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from http_server import ImageServer

from pipeline.cli import samples

DISTINCT_IMAGES = 16


def small_jpegs(count: int, seed: int = 3) -> list[bytes]:
    """``count`` small photo-like JPEGs (several sizes), made in memory."""
    rng = np.random.default_rng(seed)
    sizes = ((48, 40), (40, 48), (64, 48))
    return [samples.jpeg_bytes(samples.photo_like(rng, *sizes[i % len(sizes)])) for i in range(count)]


@pytest.fixture(scope="session")
def jpegs() -> list[bytes]:
    """A few distinct small JPEGs, served under many names."""
    return small_jpegs(DISTINCT_IMAGES)


@pytest.fixture
def image_server(jpegs: list[bytes]) -> Iterator[ImageServer]:
    """A loopback HTTP server with ``0.jpg`` ... ``999.jpg`` (see tests/pipeline/http_server.py)."""
    server = ImageServer({f"{i}.jpg": jpegs[i % len(jpegs)] for i in range(1000)}).start()
    try:
        yield server
    finally:
        server.stop()
