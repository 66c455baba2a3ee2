"""GPU utilisation and memory from NVML: real figures or none at all, never a made-up 0."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from pipeline.compute import nvml
from pipeline.compute.nvml import GpuReading, GpuStats, device_handle


class NotSupportedError(Exception):
    """Stands in for pynvml.NVMLError_NotSupported."""


class FakeNvml:
    """The part of pynvml the stats use, for one GPU with a known UUID."""

    def __init__(self, uuid: str, *, utilization_supported: bool = True) -> None:
        self.uuid = uuid
        self.utilization_supported = utilization_supported

    def nvmlDeviceGetHandleByUUID(self, name: str) -> str:  # noqa: N802  # NVML's own names
        if name != self.uuid:
            raise NotSupportedError(f"no device {name}")
        return "handle"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:  # noqa: N802
        assert handle == "handle"
        if not self.utilization_supported:
            raise NotSupportedError("Not Supported")
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:  # noqa: N802
        assert handle == "handle"
        return SimpleNamespace(used=5 * 2**30, total=140 * 2**30, free=135 * 2**30)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(nvml, "_WARNED", set())


def test_real_bindings_without_a_driver_give_no_nvml_and_say_so_once():
    """nvidia-ml-py is installed here but no NVIDIA driver is: NVML is unavailable, logged once."""
    pytest.importorskip("pynvml", reason="the gpu extra (nvidia-ml-py) is not installed")
    with capture_logs() as logs:
        assert nvml._load_nvml() is None
        assert nvml._load_nvml() is None
    warnings = [log for log in logs if log["event"].startswith("gpu metric unavailable")]
    assert len(warnings) == 1, logs
    assert "NVML" in warnings[0]["error"] or "nvml" in warnings[0]["error"].lower()


def test_without_nvml_utilisation_is_unknown_and_memory_comes_from_cuda():
    """No NVML handle: utilisation None (the series stays absent), memory from cudaMemGetInfo."""
    stats = GpuStats(None, None, memory_fallback=lambda: 7 * 2**30)
    assert stats.read() == GpuReading(utilization=None, memory_used_bytes=7 * 2**30)


def test_nvml_figures_for_the_device_found_by_uuid():
    """The device is found by its CUDA UUID (NVML's GPU- prefix added); busy percent becomes 0-1."""
    fake = FakeNvml("GPU-1234-abcd")
    handle = device_handle(fake, "1234-abcd")
    stats = GpuStats(fake, handle, memory_fallback=lambda: None)
    assert stats.read() == GpuReading(utilization=0.87, memory_used_bytes=5 * 2**30)


def test_a_mig_slice_has_memory_but_no_utilisation_and_warns_once():
    """NVML refuses utilisation for a MIG slice: that series is absent, memory still read, one warning."""
    fake = FakeNvml("MIG-77", utilization_supported=False)
    stats = GpuStats(fake, device_handle(fake, "77"), memory_fallback=lambda: None)
    with capture_logs() as logs:
        readings = [stats.read(), stats.read()]
    assert readings == [GpuReading(utilization=None, memory_used_bytes=5 * 2**30)] * 2
    assert [log["metric"] for log in logs] == ["utilization"]


def test_an_unknown_uuid_gives_no_handle_and_a_warning():
    """A UUID NVML does not know (another container's view) is no handle, never another GPU's figures."""
    with capture_logs() as logs:
        assert device_handle(FakeNvml("GPU-other"), "1234") is None
    assert "no NVML device with UUID 1234" in logs[0]["error"]
