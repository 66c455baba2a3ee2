"""The inference hot path: precision, batch-size back-off on out-of-memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pipeline.compute.inference import (
    CPU_AUTO_BATCH,
    HostStaging,
    InferenceSettings,
    Predictor,
    Staged,
    overlap_schedule,
    resolve_precision,
)
from pipeline.compute.model import ModelSpec, Preprocessing

SPEC = ModelSpec(
    name="resnet18",
    num_classes=1000,
    weights_uri=None,
    weights_sha256="random-init",
    random_init=True,
    labels=tuple(f"class_{i}" for i in range(1000)),
    preprocessing=Preprocessing(72, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear"),
)


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(count, 64, 64, 3), dtype=np.uint8)


def _inject_oom_above(monkeypatch: pytest.MonkeyPatch, predictor: Predictor, limit: int) -> list[int]:
    """Make the forward pass raise torch.OutOfMemoryError for batches larger than ``limit``."""
    seen: list[int] = []
    forward = predictor._forward

    def forward_with_limit(batch: torch.Tensor):
        seen.append(len(batch))
        if len(batch) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return forward(batch)

    monkeypatch.setattr(predictor, "_forward", forward_with_limit)
    return seen


class TestPredictor:
    def test_out_of_memory_halves_the_batch_and_keeps_results(self, monkeypatch):
        """An OOM in a batch is retried at half size until it fits; results equal the unbroken run."""
        predictor = Predictor(SPEC, None, InferenceSettings(precision="fp32", batch_size=32), top_k=3)
        images = _images(32)
        expected_ids, expected_scores = predictor.predict(images)
        seen = _inject_oom_above(monkeypatch, predictor, limit=8)
        ids, scores = predictor.predict(images)
        assert predictor.batch_size == 8
        assert predictor.oom_backoffs == 2
        assert seen[:3] == [32, 16, 8]
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)

    def test_warm_up_probe_picks_largest_batch_that_fits(self, monkeypatch):
        """The automatic batch size is the largest power-of-two step that survives the warm-up probe."""
        predictor = Predictor(SPEC, None, InferenceSettings(precision="fp32", batch_size="auto"), top_k=1)
        assert predictor.batch_size == CPU_AUTO_BATCH == 8
        _inject_oom_above(monkeypatch, predictor, limit=5)
        predictor.warm_up(predictor.batch_size)
        assert predictor.batch_size == 4

    def test_non_oom_errors_are_not_retried(self, monkeypatch):
        """Other errors propagate at once (the actor marks the rows model_error)."""
        predictor = Predictor(SPEC, None, InferenceSettings(precision="fp32", batch_size=8), top_k=1)

        def broken(batch):
            raise ValueError("shape mismatch")

        monkeypatch.setattr(predictor, "_forward", broken)
        with pytest.raises(ValueError, match="shape mismatch"):
            predictor.predict(_images(4))
        assert predictor.batch_size == 8

    def test_bf16_agrees_with_fp32_within_tolerance(self):
        """bf16 autocast keeps top-1 on >= 90% of images and softmax scores within 0.05 of fp32."""
        images = _images(24)
        fp32 = Predictor(SPEC, None, InferenceSettings(precision="fp32", batch_size=8), top_k=1)
        bf16 = Predictor(SPEC, None, InferenceSettings(precision="bf16", batch_size=8), top_k=1)
        ids32, scores32 = fp32.predict(images)
        ids16, scores16 = bf16.predict(images)
        assert np.mean(ids32 == ids16) >= 0.9
        assert np.max(np.abs(scores32 - scores16)) < 0.05

    def test_auto_precision_follows_the_hardware(self):
        """auto is fp32 on a CPU without native bf16, and never fp16 on CPU."""
        chosen = resolve_precision("auto", "cpu")
        assert chosen in {"bf16", "fp32"}
        assert resolve_precision("fp16", "cpu") == "fp16"
        assert resolve_precision("fp32", "cuda") == "fp32"


class TestCopyComputeOverlap:
    @pytest.mark.parametrize("chunks", [1, 2, 3, 7])
    def test_the_next_copy_goes_out_before_the_host_waits_and_two_at_most_are_on_the_device(self, chunks):
        """Copy i+1 and compute i+1 are issued before the host waits for i; compute i follows copy i."""
        steps = list(overlap_schedule(chunks))
        expected = [(kind, i) for i in range(chunks) for kind in ("copy", "compute", "collect")]
        assert sorted(steps) == sorted(expected)
        position = {step: at for at, step in enumerate(steps)}
        for index in range(chunks):
            assert position["copy", index] < position["compute", index] < position["collect", index]
            if index + 1 < chunks:
                assert position["compute", index + 1] < position["collect", index]
        assert [index for kind, index in steps if kind == "collect"] == list(range(chunks))
        on_device = 0
        for kind, _ in steps:
            on_device += {"copy": 1, "compute": 0, "collect": -1}[kind]
            assert 0 <= on_device <= 2

    def test_each_compute_waits_for_its_own_copy_only(self, monkeypatch):
        """The predictor waits on micro-batch i's copy event before computing i, never on a later copy."""
        log: list[str] = []

        class RecordingStaging(HostStaging):
            def __init__(self) -> None:
                self.copies = 0

            def stage(self, images):
                staged = super().stage(images)
                log.append(f"copy {self.copies}")
                self.copies += 1
                return Staged(staged.tensor, ready=f"event {self.copies - 1}")

            def take(self, staged):
                log.append(f"wait {staged.ready}")
                return staged.tensor

        predictor = Predictor(SPEC, None, InferenceSettings(precision="fp32", batch_size=4), top_k=2)
        images = _images(10)
        expected = predictor.predict(images)
        forward = predictor._forward

        def recording_forward(batch):
            log.append(f"compute {len(batch)}")
            return forward(batch)

        monkeypatch.setattr(predictor, "_staging", RecordingStaging())
        monkeypatch.setattr(predictor, "_forward", recording_forward)
        ids, scores = predictor.predict(images)
        assert log == [
            "copy 0",
            "wait event 0",
            "compute 4",
            "copy 1",
            "wait event 1",
            "compute 4",
            "copy 2",
            "wait event 2",
            "compute 2",
        ]
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_array_equal(scores, expected[1])


# Page faults of five batch-8 ResNet-18 passes at 224x224 after five to warm up, in a
# fresh process (the allocator's state is per process): the argument says whether the CPU
# Predictor keeps freed memory (as the actors do) or the test turns that off.
_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import pipeline.compute.inference as inference
    from pipeline.compute.model import ModelSpec, Preprocessing
    if sys.argv[1] == "default":
        inference.keep_freed_host_memory = lambda: False
    prep = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
    spec = ModelSpec("resnet18", 1000, None, "random-init", True, ("x",) * 1000, prep)
    settings = inference.InferenceSettings(device="cpu", precision="fp32", batch_size=8, torch_threads=1)
    predictor = inference.Predictor(spec, None, settings, top_k=1)
    images = np.zeros((8, 224, 224, 3), np.uint8)
    for _ in range(5):
        predictor.predict(images)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        predictor.predict(images)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _page_faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_cpu_predictor_reuses_freed_memory_instead_of_faulting_it_in_again():
    """With glibc's defaults every batch faults its activations in afresh; the Predictor stops that."""
    default, kept = _page_faults("default"), _page_faults("kept")
    assert default > 20_000  # ~62,000 here, batch after batch: the cost being removed is real
    assert kept * 10 < default, (kept, default)  # 0 here once the heap holds a batch's working set
