"""Fixtures of the pipeline tests that need more than tests/conftest.py: the loopback image server,
one committed run of the sample images that several modules read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from http_server import ImageServer

from pipeline.cli import samples

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.run.summary import RunSummary

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


@pytest.fixture(scope="session")
def reported_run(
    ray_session: None,
    sample_images: Path,
    local_config: Callable[..., Config],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, RunSummary]:
    """One committed local run of ``sample_images`` with ``output.report: true`` in 16-row parts:
    its output folder and summary.

    test_readers.py, test_report.py and test_inspect.py each read it (none writes into it), so
    the suite runs this job once instead of once per module.
    """
    from pipeline.run.job import run_job

    root = tmp_path_factory.mktemp("reported-run") / "out"
    summary = run_job(local_config(sample_images, root, output__report="true", output__rows_per_file=16))
    return root, summary
