"""``python -m benchmarks.table_bench``: the same run written as Parquet, Iceberg and Lance.

Makes ``--images`` small images (64x48, a tenth PNG) and a random-init ResNet-18, then runs the
job once per format, each into a fresh output (and a fresh table), on one Ray cluster started
here, in the order parquet, iceberg, lance, parquet: the second Parquet run shows the noise
between two identical runs. Reports each run's wall time, its ``committing`` phase (for a
table format: the table commit, ``_failures.parquet`` and ``_SUCCESS``), and each table
format's extra wall time over the mean of the two Parquet runs. The task is ``embed`` (512
float32 per row: what Lance is for, and the larger rows to copy); ``--task classify`` too.

Prints a table and one JSON line; ``--json PATH`` writes the JSON too.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

ORDER = ("parquet", "iceberg", "lance", "parquet")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prepare(workdir: Path, images: int) -> tuple[Path, Path]:
    """The images (reused when the count matches) and the weights file."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    from pipeline.cli import samples

    folder = workdir / f"images-{images}"
    if not folder.exists():
        samples.make_images(folder.with_suffix(".tmp"), images, sizes=((64, 48),), broken=False)
        folder.with_suffix(".tmp").rename(folder)
    weights = workdir / "resnet18.safetensors"
    if not weights.exists():
        torch.manual_seed(0)
        model = torchvision.models.get_model("resnet18", weights=None, num_classes=1000)
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
    return folder, weights


def run_one(workdir: Path, folder: Path, weights: Path, fmt: str, index: int, task: str) -> dict[str, Any]:
    """One run of the job in ``fmt``; its wall time and phases."""
    from pipeline.config import load_config
    from pipeline.run.job import run_job

    out = workdir / f"out-{index}-{fmt}"
    shutil.rmtree(out, ignore_errors=True)
    settings = {
        "input.uri": str(folder),
        "output.uri": str(out),
        "model.name": "resnet18",
        "model.weights": str(weights),
        "model.task": task,
        "inference.precision": "fp32",
        "preprocess.resize_size": 64,
        "preprocess.crop_size": 48,
        "logging.progress": "off",
        "output.format": fmt,
    }
    if fmt == "iceberg":
        settings |= {
            "output.table": f"bench.run{index}",
            "output.catalog.uri": f"sqlite:///{workdir}/catalog.sqlite",
            "output.catalog.warehouse": (workdir / "warehouse").as_uri(),
        }
    elif fmt == "lance":
        shutil.rmtree(workdir / f"run{index}.lance", ignore_errors=True)
        settings["output.table"] = str(workdir / f"run{index}.lance")
    config = load_config(None, [f"{key}={value}" for key, value in settings.items()], environ={})
    started = time.monotonic()
    summary = run_job(config)
    wall = time.monotonic() - started
    assert summary.status == "succeeded", summary.error  # noqa: S101  # a benchmark of failed runs measures nothing
    return {
        "format": fmt,
        "rows": summary.inputs,
        "wall_s": round(wall, 2),
        "committing_s": round(summary.phases.get("committing", 0.0), 2),
        "writing_s": round(summary.phases.get("writing", 0.0), 2),
    }


def main() -> None:
    """Run the four jobs; print the table and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/table-bench"))
    parser.add_argument("--task", choices=("embed", "classify"), default="embed")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder, weights = prepare(args.workdir, args.images)
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR", configure_logging=False)
    try:
        runs = [run_one(args.workdir, folder, weights, fmt, index, args.task) for index, fmt in enumerate(ORDER)]
    finally:
        ray.shutdown()
    parquet = [run["wall_s"] for run in runs if run["format"] == "parquet"]
    baseline = sum(parquet) / len(parquet)
    for run in runs:
        run["over_parquet"] = round(run["wall_s"] / baseline - 1, 4)
    print(f"{'format':<8} {'rows':>7} {'wall s':>8} {'writing s':>10} {'committing s':>13} {'vs parquet':>11}")
    for run in runs:
        print(
            f"{run['format']:<8} {run['rows']:>7} {run['wall_s']:>8.2f} {run['writing_s']:>10.2f} "
            f"{run['committing_s']:>13.2f} {run['over_parquet']:>+11.1%}"
        )
    result = {"cpu": cpu_name(), "task": args.task, "images": args.images, "parquet_mean_s": baseline, "runs": runs}
    print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
