"""Shared fixtures: generated images, random weights saved to a file, configs, Ray.

Every test that runs the job uses real parts: an in-process Ray cluster (one per
test session, shared), real files, and weights loaded by the real loader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline import samples
from pipeline.config import Config, load_config

TEST_MODEL = "resnet18"  # random-init mobilenets give near-constant logits: top-1 would be a tie

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test clusters only; the chart sets "token"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One in-process Ray cluster for the tests that run jobs (the job reuses it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 good images (JPEG and PNG, several sizes) and 3 broken files."""
    root = tmp_path_factory.mktemp("images")
    samples.make_images(root, 40, seed=1)
    return root


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init state dict of the test model, saved as safetensors."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(1234)
    model = torchvision.models.get_model(TEST_MODEL, weights=None, num_classes=1000)
    path = tmp_path_factory.mktemp("weights") / f"{TEST_MODEL}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def make_config(tmp_path: Path, weights_file: Path) -> Callable[..., Config]:
    """Build a validated config for a local run; keyword ``section__key=value`` overrides."""

    def build(input_uri: Path | str, **overrides: object) -> Config:
        items = {
            "input.uri": str(input_uri),
            "output.uri": str(tmp_path / "out"),
            "model.name": TEST_MODEL,
            "model.weights": str(weights_file),
            "inference.precision": "fp32",
            "logging.progress": "off",
        }
        items.update({key.replace("__", "."): value for key, value in overrides.items()})
        return load_config(None, [f"{k}={v}" for k, v in items.items() if v is not None], environ={})

    return build
