"""``python -m benchmarks.shard_bench``: the driver's memory over shards of many records.

A run over shards must not hold its records in the driver: the driver lists shards, the
records stream through Ray Data, and the commit counts them per shard. This writes
Parquet shards of tiny, undecodable records (every record fails with ``not_an_image``, the
failure budget is open, so no model time is spent and the cost is the per-record
bookkeeping), runs the job on each size in a fresh process, and reports that process's
peak RSS (``getrusage``: the driver alone, not the Ray processes it starts) and wall time.

Prints a table and one JSON line; ``--json PATH`` writes the JSON too.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.machine import cpu_name

SIZES = (250_000, 1_000_000)
SHARDS = 10
RECORD = b"not an image"


def write_shards(folder: Path, records: int, shards: int = SHARDS) -> None:
    """``records`` tiny undecodable records in ``shards`` Parquet files (ids from shard and row)."""
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-records // shards)
    for index in range(shards):
        count = min(per_shard, records - index * per_shard)
        images = pa.array([RECORD] * count, pa.binary())
        pq.write_table(
            pa.table({"image": images}), folder / f"part-{index:05d}.parquet", row_group_size=50_000
        )


def measure(shards: Path, out: Path) -> dict[str, Any]:
    """Run the job over ``shards`` in this process; its peak RSS and wall time (call in a fresh process)."""
    from pipeline.config import load_config
    from pipeline.run.job import run_job

    config = load_config(
        None,
        [
            f"input.uri={shards}",
            f"output.uri={out}",
            "input.format=parquet",
            "model.name=resnet18",
            "model.random_init=true",
            "output.max_failure_fraction=1.0",
            # Large batches: no row reaches the model, so the cost is per call, not per image.
            "preprocess.batch_size=2048",
            "inference.batch_size=2048",
            "logging.progress=false",
            "logging.level=warning",
            "job.name=shard-bench",
        ],
        environ={},
    )
    started = time.monotonic()
    summary = run_job(config, overwrite=True)
    seconds = time.monotonic() - started
    return {
        "records": summary.inputs,
        "failed": summary.failed,
        "status": summary.status,
        "seconds": round(seconds, 1),
        "driver_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main(argv: list[str] | None = None) -> int:
    """Write the shards of each size, run each in a fresh process, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shard_bench", description=__doc__)
    parser.add_argument("--records", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--workdir", default="shard-bench")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--measure", nargs=2, metavar=("SHARDS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child: one run, one JSON line
        print(json.dumps(measure(Path(args.measure[0]), Path(args.measure[1]))))
        return 0
    workdir = Path(args.workdir).resolve()
    runs = []
    for records in args.records:
        shards = workdir / f"shards-{records}"
        if not shards.exists():
            write_shards(shards, records)
        child = subprocess.run(  # this interpreter, this module
            [
                sys.executable,
                "-m",
                "benchmarks.shard_bench",
                "--measure",
                str(shards),
                str(workdir / f"out-{records}"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    result = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"), "shards": SHARDS, "runs": runs}
    print(f"{'records':>10} {'driver peak RSS':>16} {'seconds':>8} status")
    for run in runs:
        rss = run["driver_peak_rss_bytes"] / 2**20
        print(f"{run['records']:>10} {rss:>12.0f} MiB {run['seconds']:>8} {run['status']}")
    line = json.dumps(result)
    print(line)
    if args.json_path:
        Path(args.json_path).write_text(line + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
