"""Worker set-up hooks that inject faults into, or record calls of, the real pipeline.

Named in ``runtime_env={"worker_process_setup_hook": "fault_hooks.oom_above_4"}`` with this
directory on PYTHONPATH: every Ray worker process runs the hook before any task.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

from pipeline.compute.inference import Predictor

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


def record_predict_calls() -> None:
    """Append ``pid thread start end`` to FAULT_MARKER for every ``Predictor.predict`` call."""
    original = Predictor.predict
    marker = Path(os.environ["FAULT_MARKER"])

    def predict(self: Predictor, images):
        started = time.monotonic()
        try:
            return original(self, images)
        finally:
            with marker.open("a") as log:  # one short line per call: appends do not interleave
                log.write(f"{os.getpid()} {threading.get_ident()} {started} {time.monotonic()}\n")

    Predictor.predict = predict  # type: ignore[method-assign]
