"""``python -m benchmarks.multi_bench``: two models in one pass (``models:``) against two runs back to back.

The same generated images (``--images``, default 300; ``--size`` px, default 96) are run three
ways on one Ray cluster started here (its start-up is outside every figure): ResNet-50 alone,
ResNet-18 alone, and both in one ``models:`` run (one decode, one actor, two outputs), ``--rounds``
times in alternating order, the fastest of each kept (the machine may be shared). Random
weights (timing only), ``inference.precision`` as given (default ``auto``). Each run's wall
seconds are ``run_job``'s own (listing to commit), with its named phases (listing_inputs,
loading_model, writing, verifying, committing, ...): the per-stage times.

Prints a table and one JSON line; ``--json PATH`` writes the JSON too. ``ratio`` is the one-pass
wall time over the sum of the two separate runs (below 1: the pass saved time).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import cpu_name

PAIR = ("resnet50", "resnet18")


def write_images(folder: Path, count: int, size: int) -> None:
    """``count`` photo-like JPEGs of about ``size`` px."""
    from pipeline.cli import samples

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        image = samples.photo_like(rng, size, size * 3 // 4)
        (folder / f"{index:05d}.jpg").write_bytes(samples.jpeg_bytes(image))


def one_run(images: Path, out: Path, items: list[str]) -> dict[str, Any]:
    """One run of the job: its wall seconds, phases and counts."""
    from pipeline.config import load_config
    from pipeline.run.job import run_job

    base = [f"input.uri={images}", f"output.uri={out}", "logging.progress=off"]
    summary = run_job(load_config(None, [*base, *items], environ={}))
    if summary.status != "succeeded":
        raise SystemExit(f"run into {out} ended {summary.status}: {summary.error}")
    return {
        "seconds": round(summary.seconds, 2),
        "images_per_second": round(summary.inputs / summary.seconds, 2),
        "phases": {name: round(seconds, 2) for name, seconds in summary.phases.items()},
        "decoded": summary.decoded,
        "inputs": summary.inputs,
    }


def bench(workdir: Path, images: int, size: int, precision: str, rounds: int) -> dict[str, Any]:
    """The three runs, ``rounds`` times in alternating order (a shared machine); the fastest of each."""
    import ray

    folder = workdir / "in"
    write_images(folder, images, size)
    common = [f"inference.precision={precision}"]
    models = ", ".join(f"{{name: {name}, random_init: true, output: {name}}}" for name in PAIR)
    settings = {name: [f"model.name={name}", "model.random_init=true", *common] for name in PAIR}
    settings["both"] = [f"models=[{models}]", *common]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    ray.init(include_dashboard=False, logging_level="ERROR", configure_logging=False)
    try:
        for round_ in range(rounds):
            order = list(settings) if round_ % 2 else list(reversed(settings))
            for name in order:
                runs[name].append(one_run(folder, workdir / f"{name}-{round_}", settings[name]))
    finally:
        ray.shutdown()
    best = {name: min(found, key=lambda run: run["seconds"]) for name, found in runs.items()}
    together = best.pop("both")
    apart = sum(run["seconds"] for run in best.values())
    return {
        "bench": "multi_model",
        "cpu": cpu_name(),
        "images": images,
        "size": size,
        "precision": precision,
        "rounds": rounds,
        "separate": best,
        "separate_seconds": round(apart, 2),
        "one_pass": together,
        "ratio": round(together["seconds"] / apart, 3),
        "all_seconds": {name: [run["seconds"] for run in found] for name, found in runs.items()},
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--rounds", type=int, default=2, help="each run this often, order alternating")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="multi-bench-") as scratch:
        result = bench(args.workdir or Path(scratch), args.images, args.size, args.precision, args.rounds)
    rows = [
        *((name, run) for name, run in result["separate"].items()),
        ("both, one pass", result["one_pass"]),
    ]
    print(f"{result['images']} images of {result['size']} px on {result['cpu']}")
    for name, run in rows:
        phases = ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in run["phases"].items())
        rate, decoded = run["images_per_second"], run["decoded"]
        print(f"  {name:<15} {run['seconds']:7.1f} s  {rate:6.1f} img/s  decoded {decoded}  ({phases})")
    together, apart = result["one_pass"]["seconds"], result["separate_seconds"]
    print(f"  one pass / separate: {result['ratio']:.3f} ({together:.1f} s / {apart:.1f} s)")
    text = json.dumps(result)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
