"""Worker set-up hooks that inject faults into the real pipeline (via Ray's runtime_env).

Named in ``runtime_env={"worker_process_setup_hook": "fault_hooks.oom_above_4"}`` with this
directory on PYTHONPATH: every Ray worker process runs the hook before any task.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipeline.inference import Predictor

OOM_LIMIT = 4


def oom_above_4() -> None:
    """Make every forward pass of more than 4 images raise CUDA-style out-of-memory."""
    original = Predictor._forward
    marker = Path(os.environ["FAULT_MARKER"])

    def forward(self: Predictor, batch: torch.Tensor):
        if len(batch) > OOM_LIMIT:
            marker.write_text(f"injected OOM for a batch of {len(batch)}\n")
            raise torch.OutOfMemoryError("CUDA out of memory (injected by fault_hooks)")
        return original(self, batch)

    Predictor._forward = forward  # type: ignore[method-assign]
