"""Benchmark of ``pipeline inspect`` and ``compare`` on large synthetic outputs (issue #17 point 4).

``python -m benchmarks.inspect_bench --rows 10000000 --workdir /tmp/inspect-bench`` writes two
committed outputs in the output layout (``base``, and ``new``: a perturbed copy, see
:func:`perturb`), then runs ``pipeline inspect`` on ``base`` and ``pipeline compare base new``,
each in a fresh process, and reports each one's wall time and peak RSS (``wait4``'s
``ru_maxrss``: the process's own high-water mark, whatever it allocated it for). Outputs
already there with the same row count are reused (``--regenerate`` writes them again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.machine import cpu_name
from pipeline.outputs.layout import DATA_DIR, MANIFEST, MANIFEST_VERSION
from pipeline.schema import FailureReason, output_schema

LABELS = pa.array([f"class_{index:03d}" for index in range(1000)])
TOP_K = 5
FAILED_FRACTION = 0.02
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
MODEL = {"name": "resnet50", "sha256": "0" * 64}
# How ``new`` differs from ``base``: shares of rows relabelled, failed, recovered, dropped, added.
RELABELLED, NEWLY_FAILED, RECOVERED, DROPPED, ADDED = 0.10, 0.005, 0.3, 0.001, 0.001


def _row_ids(rng: np.random.Generator, count: int) -> pa.Array:
    """``count`` random 20-hex-character ids, like :func:`pipeline.inputs.row_ids.row_id`'s."""
    digits = HEX[rng.integers(0, 16, size=(count, 20), dtype=np.uint8)]
    raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(20), count, [None, pa.py_buffer(digits.tobytes())])
    return raw.cast(pa.binary()).cast(pa.string())


def _lists(values: pa.Array, width: int, failed: np.ndarray) -> pa.Array:
    offsets = pa.array(np.arange(0, len(values) + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(failed))


def _table(
    row_ids: pa.Array, uris: pa.Array, ids: np.ndarray, top1: np.ndarray, failed: np.ndarray, run: str
) -> pa.Table:
    """One part's rows: ``ids`` the top-k class ids (n x k), ``top1`` the top score, ``failed`` a mask."""
    count = len(row_ids)
    falling = np.array([1.0, 0.4, 0.2, 0.1, 0.05][:TOP_K], dtype=np.float32)
    scores = (top1[:, None] * falling[None, :]).astype(np.float32)
    labels = LABELS.take(pa.array(ids.ravel()))
    reasons = list(FailureReason)
    reason_index = ids[:, 0] % len(reasons)
    reason = pa.array([reasons[i].value for i in reason_index], mask=~failed)
    error = pa.array(np.where(failed, "synthetic failure", ""), mask=~failed)
    columns = {
        "row_id": row_ids,
        "uri": uris,
        "status": pa.array(np.where(failed, "failed", "ok")),
        "reason": reason,
        "error": error,
        "top_k_ids": _lists(pa.array(ids.ravel().astype(np.int32)), TOP_K, failed),
        "top_k_labels": _lists(labels, TOP_K, failed),
        "top_k_scores": _lists(pa.array(scores.ravel()), TOP_K, failed),
        "label": pc.if_else(pa.array(failed), pa.scalar(None, pa.string()), LABELS.take(pa.array(ids[:, 0]))),
        "score": pa.array(scores[:, 0], mask=failed),
        "model_name": pa.array([MODEL["name"]] * count),
        "model_sha256": pa.array([MODEL["sha256"]] * count),
        "run_id": pa.array([run] * count),
    }
    return pa.Table.from_pydict(columns, schema=output_schema())


def _distinct_top_k(rng: np.random.Generator, top1: np.ndarray) -> np.ndarray:
    """Top-k class ids starting with ``top1``, distinct within a row as torch.topk's are."""
    spread = len(LABELS) // TOP_K
    offsets = rng.integers(1, spread, size=(len(top1), TOP_K - 1)) + np.arange(TOP_K - 1) * spread
    return np.concatenate([top1[:, None], (top1[:, None] + offsets) % len(LABELS)], axis=1)


def base_part(index: int, rows: int) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray, np.ndarray]:
    """Part ``index`` of ``base``: row ids, URIs, top-k ids (a long-tailed top-1), top scores, failed mask."""
    rng = np.random.default_rng([17, index])
    numbers = pa.array(np.arange(index * rows, (index + 1) * rows)).cast(pa.string())
    uris = pc.binary_join_element_wise("s3://images/", numbers, ".jpg", "")
    ids = _distinct_top_k(rng, np.minimum(rng.zipf(1.3, rows) - 1, len(LABELS) - 1))
    top1 = rng.beta(5, 2, rows).astype(np.float32)
    return _row_ids(rng, rows), uris, ids, top1, rng.random(rows) < FAILED_FRACTION


def perturb(
    index: int, parts: tuple[pa.Array, pa.Array, np.ndarray, np.ndarray, np.ndarray]
) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray, np.ndarray]:
    """``new``'s part: 10% relabelled, 0.5% newly failed, 30% of failures recovered, 0.1% dropped, added."""
    row_ids, uris, ids, top1, failed = parts
    rng = np.random.default_rng([71, index])
    count = len(row_ids)
    ids = ids.copy()
    relabel = rng.random(count) < RELABELLED
    ids[relabel] = _distinct_top_k(rng, rng.integers(0, len(LABELS), int(relabel.sum())))
    failed = (failed & (rng.random(count) >= RECOVERED)) | (rng.random(count) < NEWLY_FAILED)
    keep = rng.random(count) >= DROPPED
    added = int(count * ADDED)
    extra_numbers = pa.array(np.arange(added) + 10**12 + index * count).cast(pa.string())
    return (
        pa.concat_arrays([row_ids.filter(pa.array(keep)), _row_ids(rng, added)]),
        pa.concat_arrays(
            [
                uris.filter(pa.array(keep)),
                pc.binary_join_element_wise("s3://images/", extra_numbers, ".jpg", ""),
            ]
        ),
        np.concatenate([ids[keep], _distinct_top_k(rng, rng.integers(0, len(LABELS), added))]),
        np.concatenate([top1[keep], rng.beta(5, 2, added).astype(np.float32)]),
        np.concatenate([failed[keep], np.zeros(added, dtype=bool)]),
    )


def write_outputs(workdir: Path, rows: int, parts: int) -> dict[str, Path]:
    """Write ``base`` and ``new`` under ``workdir``, ``parts`` part files each, then their manifests."""
    roots = {name: workdir / name for name in ("base", "new")}
    files: dict[str, list[dict[str, Any]]] = {name: [] for name in roots}
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
        (root / DATA_DIR).mkdir(parents=True)
    per_part = rows // parts
    for index in range(parts):
        base = base_part(index, per_part)
        for name, arrays in (("base", base), ("new", perturb(index, base))):
            table = _table(*arrays, run=f"bench-{name}")
            path = f"{DATA_DIR}/part-bench-{index:05d}.parquet"
            pq.write_table(table, roots[name] / path)
            files[name].append({"path": path, "rows": table.num_rows})
        print(f"  part {index + 1}/{parts} written", file=sys.stderr)
    for name, root in roots.items():
        _write_manifest(root, name, files[name])
    return roots


def _write_manifest(root: Path, name: str, files: list[dict[str, Any]]) -> None:
    """A ``_SUCCESS`` with the counts of the parts (read from their footers and status columns)."""
    counts = pq.ParquetDataset([str(root / item["path"]) for item in files]).read(
        columns=["status", "reason"]
    )
    failed = counts.filter(pc.equal(counts.column("status"), "failed"))
    by_reason = {
        str(k): int(v) for k, v in zip(*failed.column("reason").value_counts().flatten(), strict=True)
    }
    total = sum(int(item["rows"]) for item in files)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "run_id": f"bench-{name}",
        "job": "inspect-bench",
        "status": "committed",
        "counts": {"inputs": total, "succeeded": total - failed.num_rows, "failed": failed.num_rows},
        "failed_by_reason": dict(sorted(by_reason.items())),
        "config_hash": "b" * 64,
        "model": MODEL,
        "committed_at": "2026-12-01T01:00:00Z",
        "seconds": 3600.0,
        "images_per_second": round(total / 3600.0, 3),
        "timings_s": {"ray_ready": 5.0, "first_batch": 20.0, "written": 3590.0},
        "layout": {"data": DATA_DIR, "rows": total, "files": files, "failed_rows": failed.num_rows},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def measure(command: list[str]) -> dict[str, Any]:
    """Run ``python -m pipeline <command>`` in a fresh process: exit code, wall seconds, peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "pipeline", *command], stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own high-water mark, in KiB
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"pipeline {' '.join(command)} exited {process.returncode}: {stderr[-2000:]}")
    return {
        "command": f"pipeline {' '.join(command)}",
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "output": json.loads(stdout) if "--json" in command else stdout,
    }


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the two outputs, then time inspect and compare on them."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inspect_bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of base (default 10,000,000)")
    parser.add_argument("--parts", type=int, default=20, help="part files per output (default 20)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "inspect-bench")
    parser.add_argument("--regenerate", action="store_true", help="write the outputs even if present")
    parser.add_argument("--json", dest="json_path", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    stamp = args.workdir / "rows.json"
    wanted = {"rows": args.rows, "parts": args.parts}
    generated = None
    if args.regenerate or not stamp.exists() or json.loads(stamp.read_text()) != wanted:
        started = time.monotonic()
        print(f"writing {args.rows:,} rows x 2 outputs under {args.workdir} ...", file=sys.stderr)
        write_outputs(args.workdir, args.rows, args.parts)
        stamp.write_text(json.dumps(wanted), encoding="utf-8")
        generated = round(time.monotonic() - started, 1)
    base, new = (str(args.workdir / name) for name in ("base", "new"))
    disk = sum(path.stat().st_size for path in args.workdir.rglob("*.parquet"))
    inspect = measure(["inspect", base, "--json"])
    compare = measure(["compare", base, new, "--json"])
    result = {
        "rows": args.rows,
        "parts": args.parts,
        "parquet_bytes_both_outputs": disk,
        "generate_seconds": generated,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "inspect": {key: inspect[key] for key in ("command", "seconds", "peak_rss_mib")},
        "compare": {key: compare[key] for key in ("command", "seconds", "peak_rss_mib")},
        "compare_result": {key: compare["output"][key] for key in ("rows", "top1_agreement", "top5_overlap")},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        args.json_path.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
