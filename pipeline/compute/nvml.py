"""GPU utilisation and memory of an inference actor's device, read through NVML.

NVML (the library behind ``nvidia-smi``) is reached through ``nvidia-ml-py``,
installed by the ``gpu`` extra and in the GPU image. The device is found by its
UUID, so ``CUDA_VISIBLE_DEVICES`` (which Ray sets per actor) and MIG slices map to
the right physical GPU.

A figure NVML cannot give is None, never a made-up 0: the bindings are missing, the
driver's library is absent, or the device does not report it (a MIG slice has no
utilisation). The exported series is then absent, so an alert on low utilisation
cannot fire on a GPU nobody measured. Each such failure is logged once per process.
Memory falls back to the CUDA runtime's own device-wide figure (``cudaMemGetInfo``),
which needs no NVML.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class GpuReading:
    """One reading: busy fraction (0-1) and bytes in use on the device; None where unknown."""

    utilization: float | None
    memory_used_bytes: int | None


_WARNED: set[str] = set()


def _warn_once(what: str, error: str) -> None:
    if what in _WARNED:
        return
    _WARNED.add(what)
    from pipeline.ops.logs import get_logger

    get_logger(stage="inference").warning(
        "gpu metric unavailable: the series is not exported", metric=what, error=error
    )


def _load_nvml() -> Any:
    """The initialised ``pynvml`` module, or None (logged once) where NVML cannot be used."""
    try:
        import pynvml
    except ImportError as exc:
        _warn_once("nvml", f"{exc} (install the gpu extra: nvidia-ml-py)")
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        _warn_once("nvml", f"{type(exc).__name__}: {exc}")
        return None
    return pynvml


class GpuStats:
    """Reads utilisation and memory of one device; build with :meth:`for_device`."""

    def __init__(self, nvml: Any, handle: Any, memory_fallback: Any) -> None:
        self._nvml = nvml
        self._handle = handle
        self._memory_fallback = memory_fallback  # () -> bytes used on the device, or None

    @classmethod
    def for_device(cls, device: torch.device) -> GpuStats:
        """Stats of a CUDA device of this process, through NVML where it works."""
        import torch

        def cuda_memory_used() -> int | None:
            with contextlib.suppress(RuntimeError):
                free, total = torch.cuda.mem_get_info(device)
                return int(total - free)
            return None

        nvml = _load_nvml()
        handle = None
        if nvml is not None:
            uuid = str(torch.cuda.get_device_properties(device).uuid)
            handle = device_handle(nvml, uuid)
        return cls(nvml, handle, cuda_memory_used)

    def read(self) -> GpuReading:
        """Utilisation over NVML's last sample period and memory in use, each None if unknown."""
        utilization = memory = None
        if self._handle is not None:
            utilization = self._query("utilization", "nvmlDeviceGetUtilizationRates")
            memory = self._query("memory", "nvmlDeviceGetMemoryInfo")
        return GpuReading(
            utilization=None if utilization is None else utilization.gpu / 100.0,
            memory_used_bytes=int(memory.used) if memory is not None else self._memory_fallback(),
        )

    def _query(self, what: str, function: str) -> Any:
        try:
            return getattr(self._nvml, function)(self._handle)
        except Exception as exc:  # NVMLError_NotSupported on a MIG slice, GPU lost, ...
            _warn_once(what, f"{type(exc).__name__}: {exc}")
            return None


def device_handle(nvml: Any, uuid: str) -> Any:
    """NVML's handle for the device with this CUDA UUID, or None (logged once)."""
    # torch prints a GPU's UUID bare; NVML names it "GPU-<uuid>" (a MIG slice "MIG-<uuid>").
    names = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
    error: Exception | None = None
    for name in names:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(name)
        except Exception as exc:
            error = exc
    _warn_once("nvml", f"no NVML device with UUID {uuid}: {type(error).__name__}: {error}")
    return None
