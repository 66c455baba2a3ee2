"""Batch image classification with torchvision models on Ray Data.

The public API is small: build a :class:`Config` with :func:`load_config`, run it with
:func:`run_job` (a :class:`RunSummary` back, or one of the errors below with its exit
code), e.g.::

    from pipeline import load_config, run_job

    summary = run_job(load_config("job.yaml", ["output.uri=s3://bucket/out/2026-12-01"]))

Everything else is internal and may change. Names are loaded on first use, so importing
the package (as every Ray worker does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline._version import __version__

_EXPORTS = {
    "Config": "pipeline.config",
    "load_config": "pipeline.config",
    "run_job": "pipeline.run.job",
    "RunSummary": "pipeline.run.summary",
    "PipelineError": "pipeline.errors",
    "ConfigError": "pipeline.errors",
    "InputError": "pipeline.errors",
    "ModelError": "pipeline.errors",
    "OutputExistsError": "pipeline.errors",
    "StorageError": "pipeline.errors",
    "FailureBudgetExceededError": "pipeline.errors",
    "JobFailedError": "pipeline.errors",
    "ClusterUnreachableError": "pipeline.errors",
    "OutputInUseError": "pipeline.errors",
    "ResumeRefusedError": "pipeline.errors",
    "UnexpectedError": "pipeline.errors",
}
__all__ = [
    "ClusterUnreachableError",
    "Config",
    "ConfigError",
    "FailureBudgetExceededError",
    "InputError",
    "JobFailedError",
    "ModelError",
    "OutputExistsError",
    "OutputInUseError",
    "PipelineError",
    "ResumeRefusedError",
    "RunSummary",
    "StorageError",
    "UnexpectedError",
    "__version__",
    "load_config",
    "run_job",
]

if TYPE_CHECKING:
    from pipeline.config import Config, load_config
    from pipeline.errors import (
        ClusterUnreachableError,
        ConfigError,
        FailureBudgetExceededError,
        InputError,
        JobFailedError,
        ModelError,
        OutputExistsError,
        OutputInUseError,
        PipelineError,
        ResumeRefusedError,
        StorageError,
        UnexpectedError,
    )
    from pipeline.run.job import run_job
    from pipeline.run.summary import RunSummary


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
