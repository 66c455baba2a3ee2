"""The GPU path on a real CUDA device: precision, a real out-of-memory, nvJPEG, copy/compute overlap.

Marked ``gpu`` and skipped where CUDA is absent; ``scripts/gpu-check.sh`` runs them on a
GPU machine and collects the figures each test records (``record_property``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.cli import samples
from pipeline.compute.decode import DecodeSettings, decode
from pipeline.compute.device_decode import device_crops
from pipeline.compute.inference import InferenceSettings, Predictor
from pipeline.compute.model import ModelSpec, Preprocessing
from pipeline.schema import ENCODING_JPEG

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device here: scripts/gpu-check.sh runs these on a GPU machine",
    ),
]

# ResNet-50 as the job runs it: its DEFAULT weights' preprocessing, random weights (seeded).
PREP = Preprocessing(232, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
SPEC = ModelSpec("resnet50", 1000, None, "random-init", True, tuple(map(str, range(1000))), PREP)  # noqa: FBT003
ON_CPU = DecodeSettings(232, 224, "bilinear", 89_478_485, reduced_decode=False)
GIB = 2**30


def _predictor(precision: str, batch_size: int = 128) -> Predictor:
    settings = InferenceSettings(device="cuda", precision=precision, batch_size=batch_size)
    return Predictor(SPEC, None, settings, top_k=5, seed=0)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a[:, 0] == b[:, 0]))


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    rng = np.random.default_rng(11)
    sizes = samples.IMAGENET_SIZES
    return [samples.jpeg_bytes(samples.photo_like(rng, *sizes[i % len(sizes)])) for i in range(256)]


@pytest.fixture(scope="module")
def crops(jpegs: list[bytes]) -> np.ndarray:
    decoded = [decode(blob, ON_CPU).crop for blob in jpegs]
    assert all(crop is not None for crop in decoded)
    return np.stack(decoded)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fp32_ids(crops: np.ndarray) -> np.ndarray:
    ids, _ = _predictor("fp32").predict(crops)
    return ids


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_agrees_with_fp32(precision, crops, fp32_ids, record_property):
    """bf16 and fp16 autocast keep the fp32 top-1 on >= 99% of the same images."""
    ids, scores = _predictor(precision).predict(crops)
    agreement = _agreement(ids, fp32_ids)
    record_property(f"top1_agreement_{precision}_vs_fp32", agreement)
    assert np.all(np.isfinite(scores))
    assert agreement >= 0.99, agreement


def test_a_real_out_of_memory_halves_the_batch_and_keeps_every_result(crops, record_property):
    """Fill the card, leave 3 GiB: a 4,096-image micro-batch runs out of memory for real, the
    predictor halves it until it fits, and every image still gets the result it gets unsqueezed."""
    images = np.resize(crops, (4096, *crops.shape[1:]))
    reference, _ = _predictor("bf16", batch_size=256).predict(images)
    squeezed = _predictor("bf16", batch_size=4096)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(max(0, free - 3 * GIB), dtype=torch.uint8, device="cuda")
    try:
        ids, _ = squeezed.predict(images)
    finally:
        del filler
        torch.cuda.empty_cache()
    record_property("oom_backoffs", squeezed.oom_backoffs)
    record_property("batch_size_after_oom", squeezed.batch_size)
    assert squeezed.oom_backoffs >= 1
    assert squeezed.batch_size < 4096
    assert ids.shape == reference.shape
    assert _agreement(ids, reference) >= 0.99  # cuDNN may pick other kernels at another size


def test_nvjpeg_gives_the_cpu_top1(jpegs, crops, fp32_ids, record_property):
    """The same files decoded by nvJPEG on the GPU and by PIL on a CPU: near-identical crops, same top-1."""
    on_device = DecodeSettings(232, 224, "bilinear", 89_478_485, reduced_decode=False, keep_jpeg=True)
    device = torch.device("cuda")
    gpu_crops, failures = device_crops(jpegs, [ENCODING_JPEG] * len(jpegs), on_device, device)
    assert failures == {}
    assert gpu_crops.device.type == "cuda"
    difference = np.abs(gpu_crops.cpu().numpy().astype(np.int16) - crops.astype(np.int16))
    ids, _ = _predictor("fp32").predict(gpu_crops)
    agreement = _agreement(ids, fp32_ids)
    record_property("nvjpeg_mean_abs_pixel_difference", float(difference.mean()))
    record_property("nvjpeg_top1_agreement_with_cpu_decode", agreement)
    assert difference.mean() < 2.0  # IDCT and resize rounding differ by a level or two
    assert agreement >= 0.98, agreement


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def test_host_to_device_copies_overlap_compute(crops, record_property):
    """torch.profiler's CUDA timeline: most of the host-to-device copy time runs under a compute kernel."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    predictor = _predictor("bf16", batch_size=256)
    images = np.resize(crops, (16 * 256, *crops.shape[1:]))
    predictor.predict(images)  # warm: cuDNN autotune, pinned-memory pool
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
        predictor.predict(images)
        torch.cuda.synchronize()
    copies, kernels = [], []
    for event in trace.events():
        if event.device_type != DeviceType.CUDA:
            continue
        interval = (float(event.time_range.start), float(event.time_range.end))
        if "HtoD" in event.name:
            copies.append(interval)
        elif not event.name.startswith(("Memcpy", "Memset")):
            kernels.append(interval)
    compute = _union(kernels)
    copy_time = sum(end - start for start, end in copies)
    overlapped = sum(
        max(0.0, min(end, c_end) - max(start, c_start)) for start, end in copies for c_start, c_end in compute
    )
    assert copies, "no host-to-device copy in the trace"
    fraction = overlapped / copy_time
    record_property("htod_copies", len(copies))
    record_property("htod_copy_fraction_overlapped_by_compute", fraction)
    assert fraction >= 0.5, fraction
