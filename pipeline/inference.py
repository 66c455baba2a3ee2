"""The inference hot path: uint8 crops in, top-k ids and scores out.

Conversion to float, normalisation and the NHWC->NCHW change happen on the
device; the model runs in ``channels_last`` under autocast (bf16/fp16) unless
fp32 is asked for. On CUDA, host batches are pinned and copied on a side stream
while the previous micro-batch computes. An out-of-memory error halves the
micro-batch and retries; the smaller size is kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.model import ModelSpec, build_model

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import torch

# On CPU, small batches keep a ResNet-50's activations in cache: on the 2-core test
# machine batch 8 ran 13.8 img/s against 10.5 at 32 and 9.7 at 64 (docs/benchmarks.md).
CPU_AUTO_BATCH = 8
CUDA_AUTO_BATCH = 512

# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20
_TRIM_THRESHOLD = 2**30


def keep_freed_host_memory() -> bool:
    """Let this process reuse the memory a forward pass frees instead of giving it back.

    By default glibc returns large freed blocks to the kernel and faults them in again
    on the next batch: a CPU ResNet-50 actor spent 7% of its CPU in the kernel (51,000
    page faults a second). Blocks of up to 32 MiB (glibc's ceiling) now come from the
    heap, and a heap keeps up to 1 GiB free at its top, so the process holds on to its
    largest batch's working set. True when set; glibc only, a no-op elsewhere.
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


@dataclass(frozen=True)
class InferenceSettings:
    """Resolved per-actor settings (from :class:`pipeline.config.InferenceConfig`)."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int | str = "auto"
    channels_last: bool = True
    compile: bool = False
    torch_threads: int | None = None
    max_oom_retries: int = 4


def resolve_device(requested: str) -> str:
    """``auto`` is CUDA when this process sees a GPU, else CPU."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    import torch

    with contextlib.suppress(AttributeError, RuntimeError):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # noqa: SLF001
    return False


def resolve_precision(requested: str, device: str) -> str:
    """``auto`` is bf16 where the hardware has it, fp16 on older GPUs, fp32 otherwise."""
    import torch

    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, a host allocation failure, or oneDNN's equivalent message."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Predictor:
    """A model on a device, ready to classify uint8 NHWC batches."""

    def __init__(
        self,
        spec: ModelSpec,
        state_dict: dict[str, torch.Tensor] | None,
        settings: InferenceSettings,
        *,
        top_k: int = 5,
        seed: int = 0,
    ) -> None:
        import torch

        started = time.perf_counter()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.spec = spec
        self.settings = settings
        self.top_k = min(top_k, spec.num_classes)
        self.device = torch.device(resolve_device(settings.device))
        if self.device.type == "cpu":
            keep_freed_host_memory()  # before the model and its first batches allocate
        self.precision = resolve_precision(settings.precision, self.device.type)
        if state_dict is None:
            torch.manual_seed(seed)  # every actor of a random-init run holds the same weights
        model = build_model(spec.name, spec.num_classes, state_dict).to(self.device)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if settings.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        self.model = model
        prep = spec.preprocessing
        self._mean = torch.tensor(prep.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(prep.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        auto = CUDA_AUTO_BATCH if self.device.type == "cuda" else CPU_AUTO_BATCH
        self.batch_size = auto if settings.batch_size == "auto" else int(settings.batch_size)
        self._copy_stream = (
            torch.cuda.Stream() if self.device.type == "cuda" else None  # type: ignore[no-untyped-call]
        )
        self.oom_backoffs = 0
        # Auto on CUDA: probe the working size now, halving on OOM (the largest that fits).
        probe_full = settings.batch_size == "auto" and self.device.type == "cuda"
        self.warm_up(self.batch_size if probe_full else min(self.batch_size, 2))
        self.load_seconds = time.perf_counter() - started

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._dtype)

    def _to_device(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        import torch

        if isinstance(images, torch.Tensor):  # decoded on the device already
            return images.to(self.device)
        if not (images.flags.writeable and images.flags.c_contiguous):
            images = np.array(images)  # torch refuses to alias read-only buffers
        host = torch.from_numpy(images)
        if self.device.type != "cuda":
            return host
        host = host.pin_memory()
        assert self._copy_stream is not None  # noqa: S101  # set together with the CUDA device
        with torch.cuda.stream(self._copy_stream):
            return host.to(self.device, non_blocking=True)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if self._copy_stream is not None:
            torch.cuda.current_stream().wait_stream(self._copy_stream)
            batch.record_stream(torch.cuda.current_stream())
        x = batch.permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            logits = self.model(x)
        probabilities = torch.softmax(logits.float(), dim=1)
        scores, ids = torch.topk(probabilities, self.top_k, dim=1)
        return ids, scores

    def _chunks(self, images: np.ndarray | torch.Tensor, size: int) -> Iterator[np.ndarray | torch.Tensor]:
        for start in range(0, len(images), size):
            yield images[start : start + size]

    def _run_pipelined(self, images: np.ndarray | torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Copy micro-batch i+1 while micro-batch i computes (two in flight on CUDA)."""
        chunks = list(self._chunks(images, size))
        ids_out, scores_out = [], []
        pending = self._to_device(chunks[0])
        for index in range(len(chunks)):
            current = pending
            if index + 1 < len(chunks):
                pending = self._to_device(chunks[index + 1])
            ids, scores = self._forward(current)
            ids_out.append(ids.cpu().numpy())
            scores_out.append(scores.cpu().numpy())
        return np.concatenate(ids_out).astype(np.int32), np.concatenate(scores_out).astype(np.float32)

    def predict(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Top-k class ids (int32) and softmax scores (float32) for N x H x W x 3 uint8 images.

        ``images`` is a host array, or a tensor already on the device (decoded there).
        """
        if len(images) == 0:
            return np.zeros((0, self.top_k), np.int32), np.zeros((0, self.top_k), np.float32)
        return self.with_oom_backoff(lambda size: self._run_pipelined(images, size))

    def with_oom_backoff(
        self, run: Callable[[int], tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run with the current micro-batch size; on OOM halve it and retry.

        Calls running at once (a CPU actor's parallel calls) each halve the size that
        failed for them, never one another's already smaller size.
        """
        import torch

        for _ in range(self.settings.max_oom_retries + 1):
            size = self.batch_size
            try:
                return run(size)
            except Exception as exc:
                if not is_out_of_memory(exc) or size == 1:
                    raise
                self.batch_size = min(self.batch_size, max(1, size // 2))
                self.oom_backoffs += 1
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return run(self.batch_size)

    def warm_up(self, size: int) -> None:
        """Forward passes on ``size`` blank images (compile, cuDNN autotune, OOM probe)."""
        crop = self.spec.preprocessing.crop_size
        dummy = np.zeros((size, crop, crop, 3), dtype=np.uint8)
        self.with_oom_backoff(lambda s: self._run_pipelined(dummy[:s], s))

    def gpu_stats(self) -> tuple[float, int] | None:
        """(utilisation 0-1, allocated bytes) on CUDA, else None."""
        import torch

        if self.device.type != "cuda":
            return None
        utilization = 0.0
        with contextlib.suppress(Exception):
            utilization = torch.cuda.utilization(self.device) / 100.0
        return utilization, int(torch.cuda.memory_allocated(self.device))
