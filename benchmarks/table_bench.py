"""``python -m benchmarks.table_bench``: what writing a run as Iceberg or Lance costs over Parquet.

A table output runs exactly the Parquet output's code (write, restore, tally, ``_SUCCESS``) plus
one step: the table commit (:func:`pipeline.outputs.tables.table_commit.commit_run`). So the cost
of a format is that step's time against the run's. Two measurements:

1. **The job** (``--images``, default 20,000): one real run of the job on generated 64x48 images
   with a random-init ResNet-18 (``model.task: embed``, 512 float32 per row), Parquet, on a Ray
   cluster started here; then that run's verified parts committed to a fresh Iceberg table and
   a fresh Lance dataset, each timed. Extra wall time = commit seconds / run seconds.
2. **The write step alone** (``--rows``, default 20,000): synthetic parts of the same rows (10
   parts) written with pyarrow, tallied and committed (``_failures.parquet``, ``_SUCCESS``),
   then the same plus each table commit: the worst case, with no model time at all.

Prints a table and one JSON line; ``--json PATH`` writes the JSON too. ``--skip-job`` runs only 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.machine import cpu_name

DIM = 512
PARTS = 10
FAILED_FRACTION = 0.02


def table_config(workdir: Path, out: Path, fmt: str, name: str, extra: dict[str, Any]) -> Any:
    """A config writing ``out`` as ``fmt`` into the table ``name`` (fresh)."""
    from pipeline.config import load_config

    settings = {"input.uri": str(workdir / "in"), "output.uri": str(out), "model.random_init": True, **extra}
    settings["output.format"] = fmt
    if fmt == "iceberg":
        settings |= {
            "output.table": f"bench.{name}",
            "output.catalog.uri": f"sqlite:///{workdir}/catalog.sqlite",
            "output.catalog.warehouse": (workdir / "warehouse").as_uri(),
        }
    elif fmt == "lance":
        shutil.rmtree(workdir / f"{name}.lance", ignore_errors=True)
        settings["output.table"] = str(workdir / f"{name}.lance")
    return load_config(None, [f"{key}={value}" for key, value in settings.items()], environ={})


def table_commit_s(config: Any, run_id: str) -> float:
    """Seconds of the table commit of the verified parts under ``output.uri`` (tallied first, untimed)."""
    from pipeline.outputs import tally
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.tables import table_commit

    location = OutputLocation.open(config.output.uri, config.storage)
    ids = pq.read_table(location.path_of("data"), columns=["row_id"]).column("row_id").to_pylist()
    result = tally.tally(location, config.storage, ids)
    target = table_commit.target_of(config)
    assert target is not None  # noqa: S101  # a table format
    started = time.monotonic()
    table_commit.commit_run(target, location, result, run_id, "0" * 64)
    return time.monotonic() - started


def job(workdir: Path, images: int) -> dict[str, Any]:
    """Measurement 1: one real Parquet run, then its parts committed to each table format."""
    import ray
    import torch
    import torchvision
    from safetensors.torch import save_file

    from pipeline.cli import samples
    from pipeline.run.job import run_job

    folder = workdir / f"images-{images}"
    if not folder.exists():
        samples.make_images(folder.with_suffix(".tmp"), images, sizes=((64, 48),), broken=False)
        folder.with_suffix(".tmp").rename(folder)
    weights = workdir / "resnet18.safetensors"
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=1000)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
    out = workdir / "job-out"
    shutil.rmtree(out, ignore_errors=True)
    settings = {
        "input.uri": str(folder),
        "model.name": "resnet18",
        "model.weights": str(weights),
        "model.random_init": False,
        "model.task": "embed",
        "inference.precision": "fp32",
        "preprocess.resize_size": 64,
        "preprocess.crop_size": 48,
        "logging.progress": "off",
    }
    parquet = table_config(workdir, out, "parquet", "", settings)
    ray.init(include_dashboard=False, logging_level="ERROR", configure_logging=False)
    try:
        started = time.monotonic()
        summary = run_job(parquet)
        wall = time.monotonic() - started
    finally:
        ray.shutdown()
    assert summary.status == "succeeded", summary.error  # noqa: S101  # a failed run measures nothing
    result: dict[str, Any] = {"rows": summary.inputs, "parquet_run_s": round(wall, 2)}
    for fmt in ("iceberg", "lance"):
        seconds = table_commit_s(table_config(workdir, out, fmt, f"job_{fmt}", settings), summary.run_id)
        result[f"{fmt}_commit_s"] = round(seconds, 3)
        result[f"{fmt}_over_parquet"] = round(seconds / wall, 4)
    return result


def synthetic_parts(rows: int, run_id: str) -> list[pa.Table]:
    """``rows`` embed rows (2% failed) as :data:`PARTS` tables, as the job writes its parts."""
    from pipeline.schema import output_schema

    schema = output_schema("embed", DIM)
    rng = np.random.default_rng(0)
    per_part = -(-rows // PARTS)
    parts = []
    for part in range(PARTS):
        start, stop = part * per_part, min(rows, (part + 1) * per_part)
        count = stop - start
        failed = rng.random(count) < FAILED_FRACTION
        values = pa.array(rng.random(count * DIM, dtype=np.float32))
        vectors = pa.FixedSizeListArray.from_arrays(values, DIM, mask=pa.array(failed))
        columns = {
            "row_id": [f"{index:020x}" for index in range(start, stop)],
            "uri": [f"/images/{index}.jpg" for index in range(start, stop)],
            "status": ["failed" if bad else "ok" for bad in failed],
            "reason": ["decode_error" if bad else None for bad in failed],
            "error": [None] * count,
            "embedding": vectors,
            "model_name": ["resnet18"] * count,
            "model_sha256": ["0" * 64] * count,
            "run_id": [run_id] * count,
        }
        parts.append(pa.table(columns, schema=schema))
    return parts


def write_step(workdir: Path, rows: int) -> dict[str, Any]:
    """Measurement 2: parts written, tallied and committed, then the same with each table commit."""
    from pipeline.outputs import commit, tally
    from pipeline.outputs.layout import OutputLocation
    from pipeline.outputs.tables import table_commit

    result: dict[str, Any] = {"rows": rows}
    run_id = "20261206T000000Z-bench0"
    parts = synthetic_parts(rows, run_id)  # made once, untimed: only their writing is
    for fmt in ("parquet", "iceberg", "lance", "parquet"):
        out = workdir / f"write-{fmt}"
        shutil.rmtree(out, ignore_errors=True)
        config = table_config(workdir, out, fmt, f"write_{fmt}", {})
        started = time.monotonic()
        (out / "data").mkdir(parents=True)
        for index, part in enumerate(parts):
            pq.write_table(part, out / "data" / f"part-{index:05d}.parquet")
        location = OutputLocation.open(config.output.uri, config.storage)
        ids = [f"{index:020x}" for index in range(rows)]
        verified = tally.tally(location, config.storage, ids)
        if (target := table_commit.target_of(config)) is not None:
            table_commit.commit_run(target, location, verified, run_id, "0" * 64)
        commit.commit(location, verified, {"run_id": run_id, "layout": {}})
        seconds = time.monotonic() - started
        result.setdefault(f"{fmt}_s", []).append(round(seconds, 3))
    baseline = sum(result["parquet_s"]) / len(result["parquet_s"])
    for fmt in ("iceberg", "lance"):
        result[f"{fmt}_over_parquet"] = round(result[f"{fmt}_s"][0] / baseline - 1, 4)
    return result


def main() -> None:
    """Both measurements; the table and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "table-bench")
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"cpu": cpu_name(), "write_step": write_step(args.workdir, args.rows)}
    written = result["write_step"]
    print(f"write step alone, {args.rows} rows: parquet {written['parquet_s']} s")
    for fmt in ("iceberg", "lance"):
        print(f"  {fmt}: {written[f'{fmt}_s'][0]} s ({written[f'{fmt}_over_parquet']:+.1%})")
    if not args.skip_job:
        result["job"] = run = job(args.workdir, args.images)
        print(f"job, {run['rows']} images, parquet run {run['parquet_run_s']} s")
        for fmt in ("iceberg", "lance"):
            print(
                f"  {fmt} commit: {run[f'{fmt}_commit_s']} s ({run[f'{fmt}_over_parquet']:+.1%} of the run)"
            )
    print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
