"""``pipeline bench``: one run, the same images and model, five numbers side by side.

(a) model-only img/s at the chosen precision and batch size, on the whole machine, with
    the model run as the job's actors run it (processes, calls at once, threads); timed
    before and after (d), averaged;
(b) decode + preprocess img/s on one core (on up to DECODE_SAMPLE of the images);
(c) the ideal pipelined img/s for this machine, from (a) and (b) (docs/benchmarks.md):
    CPU-only ``1 / (1/f + 1/(c*d))``, GPU ``min(f, c*d)``;
(d) the pipeline end to end on a running Ray cluster (listing to committed manifest), in
    steady state (start-up excluded), and as a whole command (the process's and the
    embedded cluster's start added);
(e) a naive baseline: model loaded per batch, one image at a time.

Prints a table and writes JSON with rates, ratios (d/c, d/e), peak memory and how the
chosen precision agrees with fp32 on the same images: top-1 agreement (classify), the
lowest cosine between the two embeddings of an image (embed, ``--task embed``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli import samples
from pipeline.cli.peakmem import MemorySampler
from pipeline.compute.decode import decode
from pipeline.compute.inference import InferenceSettings, Predictor, resolve_device, resolve_precision
from pipeline.compute.sources import build_module, check_model, resolve_spec
from pipeline.config import Config, load_config
from pipeline.errors import ConfigError, JobFailedError
from pipeline.run.placement import ResourcePlan, decode_settings, plan_resources

#: Images decoded on one core for (b) and the top-1 agreement check (all of them, up to this).
DECODE_SAMPLE = 2048


def _overrides(images: Path, out: Path, args: argparse.Namespace, precision: str) -> list[str]:
    # Random weights, unless --set names the model's files (model.source huggingface, exported).
    given = any(item.startswith("model.weights=") for item in args.overrides)
    overrides = [
        f"model.source={args.source}",
        f"model.name={args.model}",
        *([] if given else ["model.random_init=true"]),
        "logging.progress=false",
        "logging.level=warning",
        "job.name=bench",
        *args.overrides,  # e.g. preprocess.batch_size=32, to compare a setting against the default
        f"inference.precision={precision}",
        f"input.uri={images}",
        f"output.uri={out}",
    ]
    if args.batch_size:
        overrides.append(f"inference.batch_size={args.batch_size}")
    if args.task:
        overrides.append(f"model.task={args.task}")
    return overrides


def _config(overrides: list[str]) -> Config:
    return load_config(None, overrides, environ={})


def measure_decode(paths: list[Path], config: Config) -> tuple[float, list[np.ndarray]]:
    """(b): decode + preprocess img/s on one core, and the crops for the model runs."""
    spec, _ = resolve_spec(config.model, config.preprocess)
    settings = decode_settings(config, spec)
    blobs = [path.read_bytes() for path in paths]
    started = time.perf_counter()
    crops = [decode(blob, settings).crop for blob in blobs]
    seconds = time.perf_counter() - started
    return len(blobs) / seconds, [crop for crop in crops if crop is not None]


def model_predictor(config: Config, precision: str, torch_threads: int | None = None) -> Predictor:
    """The model as the inference actor runs it, at the given precision, in this process."""
    spec, payload = resolve_spec(config.model, config.preprocess)
    inf = config.inference
    settings = InferenceSettings(
        precision=precision,
        batch_size=inf.batch_size,
        channels_last=inf.channels_last,
        torch_threads=torch_threads,
    )
    return Predictor(spec, payload, settings, top_k=1, seed=0)


@dataclass(frozen=True)
class _ModelTiming:
    """What each model process times: this config's model at ``precision``, placed as ``plan`` says."""

    config: Config
    precision: str
    plan: ResourcePlan
    images: np.ndarray
    seconds: float


def _time_model_process(timing: _ModelTiming, start_together: Any, results: Any) -> None:
    """One model in its own process, as one inference actor: warm up, wait, time its calls.

    On CPU the actor runs ``calls_in_flight_per_actor`` calls at once, each in its own
    thread on ``torch_threads`` threads, all on the one model: so does this.
    """
    config, precision, plan, images, seconds = (
        timing.config,
        timing.precision,
        timing.plan,
        timing.images,
        timing.seconds,
    )
    if plan.torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(plan.torch_threads)  # as the actor's worker starts
    try:
        predictor = model_predictor(config, precision, plan.torch_threads)
        batch = np.resize(images, (predictor.batch_size, *images.shape[1:]))
        predictor.predict(batch)  # warm-up at the working size
        calls = plan.calls_in_flight_per_actor if plan.parallel_calls else 1
        done = [0] * calls

        def call(index: int) -> None:
            while time.perf_counter() - started < seconds or done[index] < 2 * predictor.batch_size:
                predictor.predict(batch)
                done[index] += len(batch)

        threads = [threading.Thread(target=call, args=(index,)) for index in range(calls)]
        start_together.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results.put((sum(done) / (time.perf_counter() - started), predictor.batch_size))
    except BaseException as exc:
        start_together.abort()
        results.put((exc, 0))


def measure_model(
    config: Config, precision: str, images: np.ndarray, seconds: float, plan: ResourcePlan
) -> tuple[float, int]:
    """(a): model-only img/s on the whole machine, and the batch size it ran at.

    The model runs as the job's inference actors do: ``max_actors`` processes on CPU
    (one on a GPU), each with its calls in flight at once; all run together, summed.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    copies = plan.max_actors if plan.inference_device == "cpu" else 1
    start_together, results = context.Barrier(copies), context.Queue()
    args = (_ModelTiming(config, precision, plan, images, seconds), start_together, results)
    processes = [context.Process(target=_time_model_process, args=args) for _ in range(copies)]
    for process in processes:
        process.start()
    measured = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    for rate, _ in measured:
        if isinstance(rate, BaseException):
            raise rate
    return sum(rate for rate, _ in measured), measured[0][1]


def agreement_with_fp32(config: Config, images: np.ndarray, precision: str) -> float:
    """``precision`` against fp32, same weights: the share of equal top-1s, or (embed) the lowest cosine."""
    outputs = model_predictor(config, precision).predict(images)[0]
    exact = outputs if precision == "fp32" else model_predictor(config, "fp32").predict(images)[0]
    if config.model.task == "classify":
        return float(np.mean(outputs[:, 0] == exact[:, 0]))
    norms = np.linalg.norm(outputs, axis=1) * np.linalg.norm(exact, axis=1)
    return float(np.min(np.sum(outputs * exact, axis=1) / norms))


def measure_naive(config: Config, paths: list[Path]) -> float:
    """(e): the tutorial script: load the model for every batch of one image, fp32."""
    import torch

    spec, payload = resolve_spec(config.model, config.preprocess)
    settings = decode_settings(config, spec)
    mean = torch.tensor(spec.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.preprocessing.std).view(1, 3, 1, 1)
    started = time.perf_counter()
    for path in paths:
        crop = decode(path.read_bytes(), settings).crop
        if crop is None:
            continue
        model = build_module(spec, payload)
        x = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0).float() / 255.0
        with torch.inference_mode():
            model((x - mean) / std)
    return len(paths) / (time.perf_counter() - started)


def _pipeline_process(overrides: list[str], results: Any) -> None:
    """(d) in a fresh process, as a RayJob's entrypoint ``pipeline run`` runs it.

    The config is loaded here, as the command loads it (checking the model name imports
    torchvision), before the job's clock starts. One embedded Ray per process: started and
    shut down twice in one process (the run, then the 4x run), Ray's driver once died with
    SIGSEGV after the second run, its results already measured.
    """
    try:
        import ray

        from pipeline.run.cluster import connect_ray
        from pipeline.run.job import run_job

        config = _config(overrides)
        loaded = time.time()
        connect_ray(config)
        ray_ready = time.time()
        try:
            summary = run_job(config, overwrite=True)
        finally:
            ray.shutdown()
        results.put((summary, (loaded, ray_ready), None))
    except BaseException as exc:  # the message crosses the process boundary, not the object
        results.put((None, (0.0, 0.0), f"{type(exc).__name__}: {exc}"))


def measure_pipeline(overrides: list[str]) -> dict[str, Any]:
    """(d): the real job, with peak memory.

    A fresh process loads the config and starts the embedded Ray cluster, each timed on its
    own; the job then runs on it as a RayJob runs on a KubeRay cluster that is already up:
    end to end is the job, listing to committed manifest; ``whole_command`` adds the
    process's start (interpreter, imports, config) and the cluster's start.
    """
    import multiprocessing
    import queue

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_pipeline_process, args=(overrides, results))
    with MemorySampler() as memory:  # this process, the job's driver and its Ray cluster
        spawned = time.time()
        process.start()
        while True:
            try:
                summary, (loaded, ray_ready), error = results.get(timeout=5)
                break
            except queue.Empty:
                if not process.is_alive():
                    raise JobFailedError(
                        f"the pipeline process died (exit code {process.exitcode})"
                    ) from None
        process.join()
    if error is not None:
        raise JobFailedError(f"the pipeline run failed: {error}")
    if process.exitcode:
        sys.stderr.write(f"warning: the pipeline process exited with {process.exitcode} after its results\n")
    manifest = json.loads((Path(summary.output_uri) / "_SUCCESS").read_text(encoding="utf-8"))
    process_start, ray_start = loaded - spawned, ray_ready - loaded
    return {
        "resource_plan": manifest["resource_plan"],
        "end_to_end_images_per_second": summary.inputs / summary.seconds,
        "whole_command_images_per_second": summary.inputs / (process_start + ray_start + summary.seconds),
        "steady_images_per_second": summary.steady_images_per_second,
        "seconds": summary.seconds,
        "process_start_seconds": process_start,
        "ray_start_seconds": ray_start,
        "timeline_seconds": summary.timings,
        "rows": summary.inputs,
        "peak_memory_bytes": memory.peak_bytes,
    }


def ideal_rate(model_rate: float, decode_per_core: float, cores: int, device: str) -> float:
    """(c): the perfectly pipelined rate of this machine."""
    if device == "cuda":
        return min(model_rate, cores * decode_per_core)
    return 1.0 / (1.0 / model_rate + 1.0 / (cores * decode_per_core))


def main(args: argparse.Namespace) -> int:
    """Run every measurement, print the table, write the JSON."""
    workdir = Path(args.workdir).resolve()
    images = workdir / f"images-{args.images}"
    workdir.mkdir(parents=True, exist_ok=True)
    # Every --set is checked before the images are made (minutes for thousands of them).
    checked = _config(_overrides(workdir, workdir / "out", args, args.precision))
    check_model(checked.model)
    if checked.preprocess.decode_device == "gpu":
        raise ConfigError(
            "preprocess.decode_device",
            "gpu",
            "pipeline bench times decode on CPU cores (b) and needs 'cpu'; "
            "time GPU decode with `pipeline run --set preprocess.decode_device=gpu`",
        )
    if not images.exists():
        samples.imagenet_sized(images, args.images)
    paths = sorted(images.rglob("*.jpg"))
    overrides = _overrides(images, workdir / "out", args, args.precision)
    config = _config(overrides)
    device = resolve_device(config.inference.device)
    precision = resolve_precision(config.inference.precision, device)
    cores = os.cpu_count() or 1

    # (b) and the precision check on a sample: one core decoding 20,000 images takes minutes.
    decode_rate, crops = measure_decode(paths[:DECODE_SAMPLE], config)
    sample = np.stack(crops)
    del crops
    agreement = agreement_with_fp32(config, sample, precision)
    sample = sample[:64].copy()  # enough to time the model; the rest must not count in (d)'s memory
    naive_rate = measure_naive(config, paths[: args.naive_images or min(32, len(paths))])
    plan = plan_resources(config, {"CPU": cores, "GPU": 1.0 if device == "cuda" else 0.0})

    def pipeline_and_model(run_overrides: list[str]) -> tuple[dict[str, Any], list[float], float, int]:
        """(d) with ``run_overrides``, (a) timed just before and just after it, (c), the batch size.

        On a shared machine the speed drifts by several percent over a minute.
        """
        before, batch = measure_model(config, precision, sample, args.model_seconds, plan)
        pipeline = measure_pipeline(run_overrides)
        after, _ = measure_model(config, precision, sample, args.model_seconds, plan)
        return pipeline, [before, after], ideal_rate((before + after) / 2, decode_rate, cores, device), batch

    pipeline, model_rates, ideal, batch_size = pipeline_and_model(overrides)
    model_rate = sum(model_rates) / 2
    memory_check = None
    if args.memory_check:
        big = workdir / f"images-{4 * args.images}"
        if not big.exists():
            samples.imagenet_sized(big, 4 * args.images, seed=1)
        # Start-up is paid once: the longer run shows how close the stream itself gets. Its
        # ideal is timed around it too: the machine's speed drifts over the minutes between.
        big_overrides = _overrides(big, workdir / "out-4x", args, args.precision)
        bigger, big_rates, big_ideal, _ = pipeline_and_model(big_overrides)
        memory_check = {
            "images": 4 * args.images,
            "peak_memory_bytes": bigger["peak_memory_bytes"],
            "growth_ratio": bigger["peak_memory_bytes"] / pipeline["peak_memory_bytes"],
            "a_model_only_before_and_after_d": big_rates,
            "c_ideal_images_per_second": big_ideal,
            "end_to_end_images_per_second": bigger["end_to_end_images_per_second"],
            "steady_images_per_second": bigger["steady_images_per_second"],
            "ratio_end_to_end_to_ideal": bigger["end_to_end_images_per_second"] / big_ideal,
            "pipeline_timeline_seconds": bigger["timeline_seconds"],
        }
    result = {
        "machine": {"cores": cores, "device": device},
        "model": args.model,
        "source": args.source,
        "task": config.model.task,
        "precision": precision,
        "batch_size": batch_size,
        "overrides": args.overrides,
        "images": len(paths),
        "a_model_only_images_per_second": model_rate,
        "a_model_only_before_and_after_d": model_rates,
        "b_decode_images_per_second_per_core": decode_rate,
        "c_ideal_images_per_second": ideal,
        "d_pipeline_end_to_end_images_per_second": pipeline["end_to_end_images_per_second"],
        "d_pipeline_steady_images_per_second": pipeline["steady_images_per_second"],
        "d_pipeline_whole_command_images_per_second": pipeline["whole_command_images_per_second"],
        "e_naive_images_per_second": naive_rate,
        "ratio_end_to_end_to_ideal": pipeline["end_to_end_images_per_second"] / ideal,
        "ratio_whole_command_to_ideal": pipeline["whole_command_images_per_second"] / ideal,
        "ratio_steady_to_ideal": pipeline["steady_images_per_second"] / ideal,
        "ratio_end_to_end_to_naive": pipeline["end_to_end_images_per_second"] / naive_rate,
        "peak_memory_bytes": pipeline["peak_memory_bytes"],
        "top1_agreement_with_fp32": agreement if config.model.task == "classify" else None,
        "embedding_min_cosine_with_fp32": agreement if config.model.task == "embed" else None,
        "pipeline_seconds": pipeline["seconds"],
        "process_start_seconds": pipeline["process_start_seconds"],
        "ray_start_seconds": pipeline["ray_start_seconds"],
        "pipeline_timeline_seconds": pipeline["timeline_seconds"],
        "resource_plan": pipeline["resource_plan"],
        "memory_check": memory_check,
    }
    _print_table(result)
    path = Path(args.json_path) if args.json_path else workdir / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nJSON: {path}")  # noqa: T201
    return 0


def _print_table(result: dict[str, Any]) -> None:
    top1, cosine = result["top1_agreement_with_fp32"], result["embedding_min_cosine_with_fp32"]
    agreement = ("top-1 vs fp32", top1) if cosine is None else ("cosine vs fp32 (min)", cosine)
    rows = [
        ("(a) model only", result["a_model_only_images_per_second"], "img/s, whole machine"),
        ("(b) decode", result["b_decode_images_per_second_per_core"], "img/s per core"),
        ("(c) ideal", result["c_ideal_images_per_second"], "img/s, pipelined"),
        ("(d) pipeline end to end", result["d_pipeline_end_to_end_images_per_second"], "img/s"),
        ("(d) pipeline steady", result["d_pipeline_steady_images_per_second"], "img/s"),
        ("(d) whole command", result["d_pipeline_whole_command_images_per_second"], "img/s"),
        ("(e) naive baseline", result["e_naive_images_per_second"], "img/s"),
        ("d/c end to end", result["ratio_end_to_end_to_ideal"], ""),
        ("d/c whole command", result["ratio_whole_command_to_ideal"], ""),
        ("d/c steady", result["ratio_steady_to_ideal"], ""),
        ("d/e", result["ratio_end_to_end_to_naive"], ""),
        (*agreement, result["precision"]),
        ("peak memory", result["peak_memory_bytes"] / 2**20, "MiB"),
    ]
    if result["memory_check"]:
        check = result["memory_check"]
        rows.append(("4x images memory growth", check["growth_ratio"], "ratio"))
        rows.append((f"d/c end to end, {check['images']}", check["ratio_end_to_end_to_ideal"], ""))
    title = f"{result['model']} {result['task']} {result['precision']} batch {result['batch_size']}"
    print(f"{title}, {result['images']} images")  # noqa: T201
    print(f"{result['machine']['cores']} cores, {result['machine']['device']}")  # noqa: T201
    for name, value, unit in rows:
        print(f"  {name:<26} {value:10.3f}  {unit}")  # noqa: T201
