"""What a GPU machine must show, measured and written as JSON (``scripts/gpu-check.sh`` runs it).

Stage 1 needs no Ray, so it runs on a machine that has only torch:

- the machine: GPU, driver, CUDA, cores, and one NVML reading (:mod:`pipeline.compute.nvml`);
- the model alone as an inference actor runs it (uint8 host batches in, top-k out): ResNet-50
  at bf16 and fp16, ``channels_last`` on and off, a batch-size sweep, ``torch.compile`` on
  and off;
- decode capacity: PIL decode + crop on every core, and nvJPEG on the GPU;
- decode -> predict in one process, pipelined: CPU decode on the other cores feeding the
  GPU, and nvJPEG feeding it.

Stage 2 (Ray) is ``pipeline bench`` on the same machine; :func:`targets` compares its
figures with the product's targets. ``--rehearse`` runs every measurement on a CPU with a
small model and a few images, so CI keeps this module working before any GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
import xml.etree.ElementTree as ET  # reads the junit XML pytest just wrote
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.machine import cpu_name
from pipeline.cli import samples
from pipeline.compute.decode import DecodeSettings, decode
from pipeline.compute.inference import InferenceSettings, Predictor, resolve_device
from pipeline.compute.model import ModelSpec, Preprocessing

if TYPE_CHECKING:
    from collections.abc import Callable

IMAGENET = Preprocessing(232, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
#: Targets when a GPU is lent: end to end >= this share of min(model alone, decode capacity).
TARGET_RATIO_TO_IDEAL = 0.8
TARGET_RESNET50_IMAGES_PER_SECOND = 5000.0  # one H200 and 16 cores
TARGET_BF16_AGREEMENT = 0.99


@dataclass(frozen=True)
class Scale:
    """How big each measurement is: a GPU machine's, or a CPU rehearsal's."""

    model: str
    device: str
    images: int
    seconds: float
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    compile_batch: int


GPU = Scale("resnet50", "cuda", 4096, 3.0, (64, 128, 256, 512, 1024), ("bf16", "fp16"), 256)
REHEARSAL = Scale("resnet18", "cpu", 48, 0.5, (4, 8), ("fp32", "bf16"), 4)


def _spec(model: str) -> ModelSpec:
    labels = tuple(map(str, range(1000)))
    return ModelSpec(model, 1000, None, "random-init", True, labels, IMAGENET)  # noqa: FBT003


def _decode_settings(*, keep_jpeg: bool = False) -> DecodeSettings:
    return DecodeSettings(232, 224, "bilinear", 89_478_485, reduced_decode=False, keep_jpeg=keep_jpeg)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def machine() -> dict[str, Any]:
    """What the measurements ran on."""
    import torch

    from pipeline.compute.nvml import GpuStats

    cpu_model = cpu_name()
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "cuda": torch.version.cuda,
        "gpu": None,
    }
    if torch.cuda.is_available():
        device = torch.device("cuda")
        properties = torch.cuda.get_device_properties(device)
        reading = GpuStats.for_device(device).read()
        info["gpu"] = {
            "name": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "memory_bytes": properties.total_memory,
            "bf16": torch.cuda.is_bf16_supported(),
            "nvml_utilization": reading.utilization,
            "nvml_memory_used_bytes": reading.memory_used_bytes,
        }
    return info


def time_model(
    scale: Scale, precision: str, batch: int, *, channels_last: bool = True, compiled: bool = False
) -> dict[str, Any]:
    """Model alone, img/s: host uint8 batches in (copied to the device as the actor does), top-k out."""
    settings = InferenceSettings(
        device=scale.device,
        precision=precision,
        batch_size=batch,
        channels_last=channels_last,
        compile=compiled,
    )
    started = time.perf_counter()
    predictor = Predictor(_spec(scale.model), None, settings, top_k=5)
    images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    predictor.predict(images)
    ready = time.perf_counter()
    done, timed = 0, time.perf_counter()
    while time.perf_counter() - timed < scale.seconds or done < 2 * batch:
        predictor.predict(images)
        done += batch
    _sync(scale.device)
    rate = done / (time.perf_counter() - timed)
    return {
        "precision": predictor.precision,
        "batch_size": batch,
        "channels_last": channels_last,
        "compile": compiled,
        "images_per_second": rate,
        "load_and_warm_up_seconds": ready - started,
    }


def model_alone(scale: Scale) -> dict[str, Any]:
    """Each precision with and without channels_last, a batch sweep, compile on and off."""
    middle = scale.batches[len(scale.batches) // 2]
    first = scale.precisions[0]
    layouts = [time_model(scale, p, middle, channels_last=c) for p in scale.precisions for c in (True, False)]
    sweep = [time_model(scale, first, batch) for batch in scale.batches]
    compiled = [time_model(scale, first, scale.compile_batch, compiled=c) for c in (False, True)]
    best = max([*layouts, *sweep, *compiled], key=lambda run: run["images_per_second"])
    return {"precision_and_layout": layouts, "batch_sweep": sweep, "compile": compiled, "best": best}


def _decode_chunk(blobs: list[bytes]) -> np.ndarray:
    crops = [decode(blob, _decode_settings()).crop for blob in blobs]
    return np.stack([crop for crop in crops if crop is not None])


def _decode_pool(workers: int) -> ProcessPoolExecutor:
    """Decode processes, spawned: forking a process that holds a CUDA context is unsafe."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _chunks(blobs: list[bytes], size: int) -> list[list[bytes]]:
    return [blobs[start : start + size] for start in range(0, len(blobs), size)]


def cpu_decode(blobs: list[bytes], workers: int) -> dict[str, Any]:
    """PIL decode + resize + crop on ``workers`` processes, img/s."""
    with _decode_pool(workers) as pool:
        list(pool.map(_decode_chunk, _chunks(blobs[: workers * 4], 4)))  # start the workers
        started = time.perf_counter()
        decoded = sum(len(crops) for crops in pool.map(_decode_chunk, _chunks(blobs, 32)))
        seconds = time.perf_counter() - started
    return {"workers": workers, "images": decoded, "images_per_second": decoded / seconds}


def device_decode(blobs: list[bytes], device: str, batch: int = 256) -> dict[str, Any]:
    """NvJPEG (libjpeg-turbo on a CPU) decode + resize + crop on the device, img/s."""
    import torch

    from pipeline.compute.device_decode import device_crops
    from pipeline.schema import ENCODING_JPEG

    target = torch.device(device)
    settings = _decode_settings(keep_jpeg=True)
    device_crops(blobs[:batch], [ENCODING_JPEG] * min(batch, len(blobs)), settings, target)  # warm
    _sync(device)
    started, decoded = time.perf_counter(), 0
    for chunk in _chunks(blobs, batch):
        crops, _ = device_crops(chunk, [ENCODING_JPEG] * len(chunk), settings, target)
        decoded += len(crops)
    _sync(device)
    return {"batch": batch, "images": decoded, "images_per_second": decoded / (time.perf_counter() - started)}


def decode_then_predict(scale: Scale, blobs: list[bytes], workers: int, batch: int) -> dict[str, Any]:
    """One process, pipelined: CPU decode on ``workers`` cores feeding the model, then nvJPEG feeding it."""
    import torch

    from pipeline.compute.device_decode import device_crops
    from pipeline.schema import ENCODING_JPEG

    precision = scale.precisions[0]
    predictor = Predictor(
        _spec(scale.model), None, InferenceSettings(scale.device, precision, batch), top_k=5
    )
    predictor.predict(np.zeros((batch, 224, 224, 3), np.uint8))
    with _decode_pool(workers) as pool:
        list(pool.map(_decode_chunk, _chunks(blobs[: workers * 4], 4)))
        started, done = time.perf_counter(), 0
        for crops in pool.map(_decode_chunk, _chunks(blobs, batch)):  # decoded while the model runs
            done += len(predictor.predict(crops)[0])
        cpu_rate = done / (time.perf_counter() - started)
    settings = _decode_settings(keep_jpeg=True)
    target = torch.device(scale.device)
    started, done = time.perf_counter(), 0
    for chunk in _chunks(blobs, batch):
        on_device, _ = device_crops(chunk, [ENCODING_JPEG] * len(chunk), settings, target)
        done += len(predictor.predict(on_device)[0])
    return {
        "precision": predictor.precision,
        "batch_size": batch,
        "cpu_decode_workers": workers,
        "cpu_decode_then_predict_images_per_second": cpu_rate,
        "device_decode_then_predict_images_per_second": done / (time.perf_counter() - started),
    }


def test_results(path: Path) -> dict[str, Any]:
    """Outcome and recorded figures of each test in a junit XML file pytest wrote."""
    if not path.exists():
        return {"error": f"{path} was not written"}
    tests: dict[str, Any] = {}
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314  # our own pytest's file
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"skipped": "skipped"}.get(tag, "failed")
                outcome = f"{outcome}: {found.get('message', '')[:300]}"
                break
        figures = {p.get("name"): _number(p.get("value")) for p in case.iter("property")}
        tests[case.get("name", "?")] = {"outcome": outcome, **figures}
    return tests


def _number(value: str | None) -> Any:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return value


def targets(bench: dict[str, Any]) -> dict[str, Any]:
    """The product's GPU targets against a ``pipeline bench`` result: each figure and met or not."""
    end_to_end = bench["d_pipeline_end_to_end_images_per_second"]
    checks = {
        "end_to_end_vs_ideal": (bench["ratio_end_to_end_to_ideal"], TARGET_RATIO_TO_IDEAL),
        "top1_agreement_with_fp32": (bench["top1_agreement_with_fp32"], TARGET_BF16_AGREEMENT),
    }
    if bench["model"] == "resnet50":
        checks["resnet50_end_to_end_images_per_second"] = (end_to_end, TARGET_RESNET50_IMAGES_PER_SECOND)
    return {
        name: {"value": value, "target": target, "met": value >= target}
        for name, (value, target) in checks.items()
    }


def stage1(scale: Scale, workdir: Path, tests_xml: Path | None) -> dict[str, Any]:
    """Every stage-1 measurement; the GPU tests' results if pytest wrote them."""
    cores = os.cpu_count() or 1
    paths = samples.imagenet_sized(workdir / "images", max(256, scale.images // 4))
    blobs = [path.read_bytes() for path in paths]
    blobs = (blobs * (scale.images // len(blobs) + 1))[: scale.images]
    device = resolve_device(scale.device)
    batch = scale.batches[len(scale.batches) // 2]
    result: dict[str, Any] = {"stage": 1, "machine": machine(), "scale": scale.__dict__}
    if tests_xml is not None:
        result["gpu_tests"] = test_results(tests_xml)
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "model_alone": lambda: model_alone(scale),
        "cpu_decode_all_cores": lambda: cpu_decode(blobs, cores),
        "device_decode": lambda: device_decode(blobs, device),
        "decode_then_predict": lambda: decode_then_predict(scale, blobs, max(1, cores - 1), batch),
    }
    for name, step in steps.items():
        started = time.perf_counter()
        print(f"gpu-check stage 1: {name} ...", flush=True)
        try:
            result[name] = step()
        except Exception as exc:  # one broken measurement must not hide the others
            result[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        result[name]["seconds"] = time.perf_counter() - started
    result["decode_capacity_images_per_second"] = _capacity(result)
    return result


def _capacity(result: dict[str, Any]) -> float | None:
    cpu = result["cpu_decode_all_cores"].get("images_per_second")
    gpu = result["device_decode"].get("images_per_second")
    return None if cpu is None or gpu is None else cpu + gpu


def stage2(bench_json: Path, tests_xml: Path | None) -> dict[str, Any]:
    """The bench's figures against the targets; the Ray GPU tests' results."""
    bench = json.loads(bench_json.read_text(encoding="utf-8"))
    result: dict[str, Any] = {"stage": 2, "bench": bench, "targets": targets(bench)}
    if tests_xml is not None:
        result["gpu_tests"] = test_results(tests_xml)
    return result


def failures(result: dict[str, Any], *, skips_allowed: bool) -> list[str]:
    """Failed (or, on a GPU machine, skipped) tests and measurements that raised.

    A missed target is a figure to record, not a failure of the check.
    """
    tests = result.get("gpu_tests", {})
    bad = ("failed",) if skips_allowed else ("failed", "skipped")
    problems = [
        f"test {name}: {test['outcome']}"
        for name, test in tests.items()
        if isinstance(test, dict) and test.get("outcome", "").startswith(bad)
    ]
    if "error" in tests:
        problems.append(tests["error"])
    problems += [
        f"{name}: {value['error']}"
        for name, value in result.items()
        if isinstance(value, dict) and "error" in value and name != "gpu_tests"
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.gpucheck {stage1,stage2} ...``: write the stage's JSON, exit 1 on failures."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpucheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument("stage", choices=["stage1", "stage2"])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--workdir", default="gpu-check-work")
    parser.add_argument("--tests-xml", help="junit XML of the gpu tests of this stage")
    parser.add_argument("--bench-json", help="stage2: the JSON `pipeline bench` wrote")
    parser.add_argument("--rehearse", action="store_true", help="CPU, small model, few images")
    args = parser.parse_args(argv)
    tests_xml = Path(args.tests_xml) if args.tests_xml else None
    if args.stage == "stage1":
        result = stage1(REHEARSAL if args.rehearse else GPU, Path(args.workdir), tests_xml)
    else:
        result = stage2(Path(args.bench_json), tests_xml)
    result["problems"] = failures(result, skips_allowed=args.rehearse)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "bench"}, indent=2, default=str))
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
