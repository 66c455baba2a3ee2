"""The inference hot path: uint8 crops in, top-k ids and scores (or embeddings) out.

Conversion to float, normalisation and the NHWC->NCHW change happen on the
device; the model runs in ``channels_last`` under autocast (bf16/fp16) unless
fp32 is asked for. On CUDA, host batches are pinned and copied on a side stream
while the previous micro-batch computes: :func:`overlap_schedule` decides the
order (plain code, tested on CPU) and each micro-batch's compute waits for the
CUDA event of its own copy only. An out-of-memory error halves the micro-batch
and retries; the smaller size is kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.compute.nvml import GpuReading, GpuStats
from pipeline.compute.sources import build_module

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import torch

    from pipeline.compute.model import ModelSpec

# On CPU, small batches keep a ResNet-50's activations in cache: on the 2-core test
# machine batch 8 ran 13.8 img/s against 10.5 at 32 and 9.7 at 64 (docs/benchmarks.md).
CPU_AUTO_BATCH = 8
CUDA_AUTO_BATCH = 512


def auto_batch_size(device: str) -> int:
    """The batch size ``inference.batch_size: auto`` means on ``device`` ("cuda" or "cpu").

    The one definition: the resource plan sizes the stage's batches with it and each
    actor its model calls (on CUDA, its OOM probe starts there).
    """
    return CUDA_AUTO_BATCH if device == "cuda" else CPU_AUTO_BATCH


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


#: Micro-batches the host issues beyond the one whose results it waits for.
COPY_AHEAD = 1

Step = tuple[Literal["copy", "compute", "collect"], int]


def overlap_schedule(chunks: int, ahead: int = COPY_AHEAD) -> Iterator[Step]:
    """The order in which the host issues the work of ``chunks`` micro-batches.

    Micro-batch ``i`` is copied, then its compute is queued (on CUDA it waits for copy
    ``i``'s event only, :class:`CudaStaging`); the host waits for (collects) the results
    of ``i`` only after it has issued the copy and compute of ``i + ahead``. So copy
    ``i + 1`` runs on the copy stream while ``i`` computes, the GPU always has the next
    compute queued, and at most ``ahead + 1`` micro-batches are on the device at once.
    """
    for index in range(chunks + ahead):
        if index < chunks:
            yield "copy", index
            yield "compute", index
        if index >= ahead:
            yield "collect", index - ahead


@dataclass(frozen=True)
class Staged:
    """A micro-batch on its way to the device, and the event that marks its copy done (CUDA)."""

    tensor: torch.Tensor
    ready: Any = None


class HostStaging:
    """CPU: the host array is the batch; nothing to copy or wait for."""

    def stage(self, images: np.ndarray | torch.Tensor) -> Staged:
        """A tensor view of ``images`` (a device tensor is used as it is)."""
        import torch

        if isinstance(images, torch.Tensor):
            return Staged(images)
        return Staged(torch.from_numpy(_writable(images)))

    def take(self, staged: Staged) -> torch.Tensor:
        """The tensor, ready for the model."""
        return staged.tensor


class CudaStaging:
    """CUDA: pinned host memory copied on a side stream, one event per micro-batch."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self.device = device
        self.stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]

    def stage(self, images: np.ndarray | torch.Tensor) -> Staged:
        """Start the copy of ``images`` on the copy stream; its event is recorded after it."""
        import torch

        if isinstance(images, torch.Tensor) and images.device.type == "cuda":
            return Staged(images)  # decoded on the device already
        host = images if isinstance(images, torch.Tensor) else torch.from_numpy(_writable(images))
        host = host.pin_memory()
        with torch.cuda.stream(self.stream):
            tensor = host.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(self.stream)
        return Staged(tensor, ready)

    def take(self, staged: Staged) -> torch.Tensor:
        """Make the compute stream wait for this micro-batch's copy, and no other."""
        import torch

        if staged.ready is None:
            return staged.tensor
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(staged.ready)
        staged.tensor.record_stream(compute)  # the allocator must not reuse it before compute ends
        return staged.tensor


def _writable(images: np.ndarray) -> np.ndarray:
    """A C-contiguous writable array (torch refuses to alias read-only buffers)."""
    if images.flags.writeable and images.flags.c_contiguous:
        return images
    return np.array(images)


class Predictor:
    """A model on a device, ready to classify or embed (``spec.task``) uint8 NHWC batches."""

    def __init__(
        self,
        spec: ModelSpec,
        state_dict: Any,  # the source's payload (pipeline.compute.sources.LoadedModel); None: random init
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
        model = build_module(spec, state_dict).to(
            self.device
        )  # whatever its source (pipeline.compute.sources)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if settings.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        self.model = model
        prep = spec.preprocessing
        self._mean = torch.tensor(prep.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(prep.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        auto = settings.batch_size == "auto"
        self.batch_size = auto_batch_size(self.device.type) if auto else int(settings.batch_size)
        self._staging: HostStaging | CudaStaging = (
            CudaStaging(self.device) if self.device.type == "cuda" else HostStaging()
        )
        self._gpu_stats = GpuStats.for_device(self.device) if self.device.type == "cuda" else None
        self.oom_backoffs = 0
        # Auto on CUDA: probe the working size now, halving on OOM (the largest that fits).
        probe_full = auto and self.device.type == "cuda"
        self.warm_up(self.batch_size if probe_full else min(self.batch_size, 2))
        self.load_seconds = time.perf_counter() - started

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._dtype)

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """N x H x W x 3 uint8 crops as the model takes them: NCHW float on the device, normalised."""
        import torch

        batch = batch.to(self.device)  # a no-op unless a CPU-decoded tensor meets a GPU model
        x = batch.permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch

        x = self.model_input(batch)
        with torch.inference_mode(), self._autocast():
            output = self.model(x).float()
        if self.spec.embedding is not None:
            normalized = self.spec.embedding.normalized
            return (torch.nn.functional.normalize(output, dim=1) if normalized else output,)
        scores, ids = torch.topk(torch.softmax(output, dim=1), self.top_k, dim=1)
        return ids.int(), scores

    def _chunks(self, images: np.ndarray | torch.Tensor, size: int) -> Iterator[np.ndarray | torch.Tensor]:
        for start in range(0, len(images), size):
            yield images[start : start + size]

    def _run_pipelined(self, images: np.ndarray | torch.Tensor, size: int) -> tuple[np.ndarray, ...]:
        """Micro-batches of ``size``, issued in :func:`overlap_schedule`'s order."""
        chunks = list(self._chunks(images, size))
        staged: dict[int, Staged] = {}
        running: dict[int, tuple[torch.Tensor, ...]] = {}
        collected: list[tuple[np.ndarray, ...]] = []
        for step, index in overlap_schedule(len(chunks)):
            if step == "copy":
                staged[index] = self._staging.stage(chunks[index])
            elif step == "compute":
                running[index] = self._forward(self._staging.take(staged.pop(index)))
            else:  # .cpu() waits for this micro-batch's compute
                collected.append(tuple(output.cpu().numpy() for output in running.pop(index)))
        return tuple(np.concatenate(outputs) for outputs in zip(*collected, strict=True))

    def predict(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, ...]:
        """The task's outputs for N x H x W x 3 uint8 images, one row per image.

        classify: top-k class ids (int32) and softmax scores (float32); embed: ``(vectors,)``,
        float32 N x dim. ``images`` is a host array, or a tensor already on the device.
        """
        if len(images) == 0:
            if self.spec.embedding is not None:
                return (np.zeros((0, self.spec.embedding.dim), np.float32),)
            return np.zeros((0, self.top_k), np.int32), np.zeros((0, self.top_k), np.float32)
        return self.with_oom_backoff(lambda size: self._run_pipelined(images, size))

    def with_oom_backoff(self, run: Callable[[int], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
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

    def gpu_stats(self) -> GpuReading | None:
        """The actor's GPU as NVML sees it (fields NVML cannot give are None); None off CUDA."""
        return self._gpu_stats.read() if self._gpu_stats is not None else None
