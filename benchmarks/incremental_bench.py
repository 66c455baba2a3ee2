"""``python -m benchmarks.incremental_bench``: what an incremental night costs against a full one.

``speed`` (the default): ``--images`` small JPEGs run in full, then ``--changed`` of them
changed (half rewritten in place, a quarter added, a quarter deleted) and run again with
``output.previous`` on the first output. Each run is a fresh process (``pipeline run``'s own
``run_job``, an embedded Ray cluster); its summary gives the wall time, the phases and the
steady rate. "Inference" is the rows the actors classified divided by the steady rate (the
model's share); "graph" is the write step's wall time (actor start-up included).

``memory``: the driver while it carries rows forward, at each ``--carried`` size, in a fresh
process: a listing of that many tiny files (never read) and a previous output written directly
(parts of ``--rows-per-part`` rows whose rows hold their fingerprint, 2% of the inputs touched
so some parts are filtered and the rest copied), then the real
:func:`pipeline.outputs.carry.carry_forward`. A thread samples
the process's RSS every 5 ms; the figure is the peak during the carry over the RSS just
before it (the listing itself, like any run's, is outside it; so are the libraries the carry
loads on first use, loaded by a warm-up on a few rows first).

Prints a table and one JSON line; ``--json PATH`` writes the JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import cpu_name

SPEED_SETTINGS = [
    "inference.precision=fp32",
    "output.max_failure_fraction=1.0",
    "logging.progress=false",
    "logging.level=warning",
    "job.name=incremental-bench",
]


def write_images(folder: Path, count: int, start: int = 0, seed: int = 0) -> None:
    """``count`` 64-px photo-like JPEGs, 1,000 to a folder."""
    from pipeline.cli import samples

    rng = np.random.default_rng(seed)
    for index in range(start, start + count):
        sub = folder / f"f{index // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img-{index:06d}.jpg").write_bytes(samples.jpeg_bytes(samples.photo_like(rng, 64, 64)))


def weights_file(workdir: Path, model: str) -> Path:
    """Random weights of ``model``, saved as a file.

    Not ``model.random_init``: a random-init run is never carried from, since every random
    model shares one weights checksum.
    """
    path = workdir / f"weights-{model}.safetensors"
    if not path.exists():
        import torch
        import torchvision
        from safetensors.torch import save_file

        torch.manual_seed(0)
        net = torchvision.models.get_model(model, weights=None, num_classes=1000)
        save_file({key: value.contiguous() for key, value in net.state_dict().items()}, str(path))
    return path


def run_once(images: str, out: str, previous: str | None, model: str, size: int) -> dict[str, Any]:
    """One run in this process (the child of ``speed``): its summary's figures."""
    from pipeline.config import load_config
    from pipeline.run.job import run_job

    weights = weights_file(Path(out).parent, model)
    items = [*SPEED_SETTINGS, f"input.uri={images}", f"output.uri={out}", f"model.name={model}"]
    items.append(f"model.weights={weights}")
    items += [f"preprocess.resize_size={size}", f"preprocess.crop_size={size}"]
    if previous:
        items.append(f"output.previous={previous}")
    config = load_config(None, items, environ={})
    started = time.monotonic()
    summary = run_job(config, overwrite=True)
    wall = time.monotonic() - started
    rate = summary.steady_images_per_second or summary.images_per_second
    return {
        "status": summary.status,
        "inputs": summary.inputs,
        "computed": summary.processed_this_run,
        "wall_s": round(wall, 1),
        "graph_s": round(summary.phases.get("starting_workers", 0) + summary.phases.get("writing", 0), 1),
        "inference_s": round(summary.processed_this_run / rate, 2) if rate else 0.0,
        "steady_images_per_second": round(rate, 1),
        "phases_s": {name: round(seconds, 1) for name, seconds in summary.phases.items()},
        "incremental": summary.incremental,
    }


def _child(*args: str) -> dict[str, Any]:
    """Run this module in a fresh process; its last stdout line as JSON."""
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.incremental_bench", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode:
        raise SystemExit(f"child {args} failed ({child.returncode}):\n{child.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def speed(workdir: Path, images: int, changed: float, model: list[str]) -> dict[str, Any]:
    """Full run, change ``changed`` of the inputs, incremental run; both runs' figures."""
    folder = workdir / f"images-{images}"
    if not folder.exists():
        write_images(folder, images)
    full = _child("--run", str(folder), str(workdir / "night-1"), "", *model)
    files = sorted(folder.rglob("*.jpg"))
    touched = int(len(files) * changed)
    rng = np.random.default_rng(7)
    picked = rng.choice(len(files), size=touched, replace=False)
    rewrite, delete = picked[: touched // 2], picked[touched // 2 : touched // 2 + touched // 4]
    from pipeline.cli import samples

    for index in rewrite:  # other bytes in place
        files[index].write_bytes(samples.jpeg_bytes(samples.photo_like(rng, 64, 64)))
    for index in delete:
        files[index].unlink()
    write_images(folder / "added", touched - len(rewrite) - len(delete), start=10**6, seed=9)
    incremental = _child("--run", str(folder), str(workdir / "night-2"), str(workdir / "night-1"), *model)
    return {
        "images": images,
        "changed": touched,
        "full": full,
        "incremental": incremental,
        "inference_ratio": round(full["inference_s"] / incremental["inference_s"], 1)
        if incremental["inference_s"]
        else None,
        "wall_fraction": round(incremental["wall_s"] / full["wall_s"], 3),
    }


def _write_previous(listing: Any, previous_dir: Path, rows_per_part: int) -> None:
    """A committed output of ``listing`` written directly: ok rows in parts, _inputs.parquet, _SUCCESS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.inputs import fingerprints, row_ids
    from pipeline.outputs.layout import INPUTS
    from pipeline.schema import output_schema

    files = []
    (previous_dir / "data").mkdir(parents=True)
    pq.write_table(fingerprints.inputs_table(listing), previous_dir / INPUTS)
    schema = output_schema()
    for start in range(0, len(listing.uris), rows_per_part):
        uris = listing.uris[start : start + rows_per_part]
        rows = len(uris)
        table = pa.table(
            {
                "row_id": [row_ids.row_id(uri) for uri in uris],
                "uri": uris,
                "status": ["ok"] * rows,
                "reason": pa.nulls(rows, pa.string()),
                "error": pa.nulls(rows, pa.string()),
                "top_k_ids": [[1, 2, 3, 4, 5]] * rows,
                "top_k_labels": [["a", "b", "c", "d", "e"]] * rows,
                "top_k_scores": [[0.5, 0.2, 0.1, 0.1, 0.1]] * rows,
                "label": ["a"] * rows,
                "score": [0.5] * rows,
                "model_name": ["resnet18"] * rows,
                "model_sha256": ["ab" * 32] * rows,
                "run_id": ["night-1"] * rows,
                "fingerprint": fingerprints.of_inputs(listing, uris),
            },
            schema=schema,
        )
        name = f"data/part-{start // rows_per_part:05d}.parquet"
        pq.write_table(table, previous_dir / name)
        files.append({"path": name, "rows": rows})
    (previous_dir / "_SUCCESS").write_text(json.dumps({"layout": {"files": files}}), encoding="utf-8")


def _warm_up(workdir: Path) -> None:
    """Use once what the carry uses (a join, is_in, a partitioned write, Parquet reads), on a few rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    table = pa.table({"row_id": ["a", "b"], "size": [1, 2], "version": ["x", "y"]})
    table.join(table, keys=["row_id", "size", "version"], join_type="inner", use_threads=False)
    pc.is_in(table.column("row_id"), value_set=pa.array(["a"]))
    pq.write_table(table, workdir / "warm-up.parquet")
    pq.ParquetFile(workdir / "warm-up.parquet").read()
    partitioning = ds.partitioning(pa.schema([("version", pa.string())]))
    ds.write_dataset(
        table,
        workdir / "warm-up",
        format="parquet",
        partitioning=partitioning,
        existing_data_behavior="overwrite_or_ignore",
        use_threads=False,
    )
    pq.read_table(workdir / "warm-up" / "x", partitioning=None)


def carry_memory(workdir: Path, carried: int, rows_per_part: int) -> dict[str, Any]:
    """The driver's RSS while carrying ``carried`` rows (the child of ``memory``)."""
    import psutil

    from pipeline.config import load_config
    from pipeline.inputs.listing import list_inputs
    from pipeline.outputs import carry
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.previous import Previous

    folder = workdir / f"tiny-{carried}"
    if not folder.exists():
        for index in range(carried):
            sub = folder / f"f{index // 5000:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{index:07d}.jpg").write_bytes(b"x")
    config = load_config(
        None,
        [f"input.uri={folder}", f"output.uri={workdir / f'out-{carried}'}", "model.random_init=true"],
        environ={},
    )
    listing = list_inputs(config.input, config.storage)
    previous_dir = workdir / f"previous-{carried}"
    if not previous_dir.exists():
        _write_previous(listing, previous_dir, rows_per_part)
    manifest = json.loads((previous_dir / "_SUCCESS").read_text(encoding="utf-8"))
    # 2% of the inputs touched, every other one of the first 4%: their parts are filtered, the rest copied.
    for path in sorted(folder.rglob("*.jpg"))[: carried // 25 : 2]:
        path.write_bytes(b"xy")
    listing = list_inputs(config.input, config.storage)
    location = OutputLocation.open(config.output.uri, config.storage)
    previous = Previous(OutputLocation.open(str(previous_dir), config.storage), manifest)
    _warm_up(workdir)  # the libraries the carry loads on first use (Acero's join) are not the carry's
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    todo, counts = carry.carry_forward(location, previous, listing, listing.uris, keep_failed=False)
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    return {
        "carried": counts.carried,
        "computed": counts.computed,
        "parts_copied": counts.parts_copied,
        "parts_filtered": counts.parts_filtered,
        "seconds": round(seconds, 2),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_peak_during_carry_mib": round(peak / 2**20, 1),
        "carry_rss_growth_mib": round((peak - before) / 2**20, 1),
        "left_to_compute": len(todo),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the chosen measurement; print a table and the JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incremental_bench", description=__doc__)
    parser.add_argument("mode", nargs="?", choices=["speed", "memory"], default="speed")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--changed", type=float, default=0.02)
    parser.add_argument("--carried", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--rows-per-part", type=int, default=1_000)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--size", type=int, default=64, help="resize and crop size")
    parser.add_argument("--workdir", default="incremental-bench")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--run", nargs=3, metavar=("IMAGES", "OUT", "PREVIOUS"), help=argparse.SUPPRESS)
    parser.add_argument("--run-model", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--carry", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.run:  # a child: one run
        model, size = args.run_model or (args.model, args.size)
        print(json.dumps(run_once(args.run[0], args.run[1], args.run[2] or None, model, int(size))))
        return 0
    if args.carry:  # a child: one carry
        print(json.dumps(carry_memory(workdir, args.carry, args.rows_per_part)))
        return 0
    result: dict[str, Any] = {"cpu": cpu_name(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    if args.mode == "speed":
        result.update({"model": args.model, "size": args.size})
        result.update(speed(workdir, args.images, args.changed, ["--run-model", args.model, str(args.size)]))
        for name in ("full", "incremental"):
            run = result[name]
            times = f"wall {run['wall_s']} s, graph {run['graph_s']} s, inference {run['inference_s']} s"
            print(f"{name:>12}: {times}, computed {run['computed']}")
        fraction = f"{result['wall_fraction']:.1%}"
        print(f"inference {result['inference_ratio']}x less; wall {fraction} of the full run's")
    else:
        result["carry"] = [
            _child(
                "--carry", str(size), "--rows-per-part", str(args.rows_per_part), "--workdir", str(workdir)
            )
            for size in args.carried
        ]
        for run in result["carry"]:
            print(
                f"{run['carried']:>8} carried: RSS +{run['carry_rss_growth_mib']} MiB during the carry "
                f"(copied {run['parts_copied']} parts, filtered {run['parts_filtered']}), {run['seconds']} s"
            )
    line = json.dumps(result)
    print(line)
    if args.json_path:
        Path(args.json_path).write_text(line + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
