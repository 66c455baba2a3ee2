"""The whole job on a GPU under real memory pressure: every row committed, once.

Needs Ray as well as CUDA: on the GPU machine ``scripts/gpu-check.sh`` runs it in its
second stage, once Ray is installed there.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli import samples
from pipeline.outputs.layout import DATA_DIR

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device here: scripts/gpu-check.sh runs these on a GPU machine",
    ),
]
ray = pytest.importorskip("ray", reason="Ray is not installed (the GPU check's first stage runs without it)")

GIB = 2**30


@pytest.mark.parametrize("decode_device", ["cpu", "gpu"])
def test_job_commits_every_row_when_the_gpu_runs_out_of_memory(
    decode_device, ray_session, make_config, tmp_path, record_property
):
    """The card filled by another process but 4 GiB: the actor's 2,048-image batches run out of
    memory, it halves them, and the run commits every input exactly once with no model errors."""
    from pipeline.run.job import run_job

    images = tmp_path / "images"
    paths = samples.imagenet_sized(images, 2048)
    config = make_config(
        images,
        **{
            "model.name": "resnet50",
            "model.random_init": True,
            "model.weights": None,
            "inference.device": "cuda",
            "inference.precision": "bf16",
            "inference.batch_size": 2048,
            "preprocess.decode_device": decode_device,
        },
    )
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(max(0, free - 4 * GIB), dtype=torch.uint8, device="cuda")
    try:
        summary = run_job(config, overwrite=True)
    finally:
        del filler
        torch.cuda.empty_cache()
    table = pq.read_table(summary.output_uri + "/" + DATA_DIR, columns=["row_id", "status", "reason"])
    record_property(f"job_under_memory_pressure_{decode_device}_rows", table.num_rows)
    assert table.num_rows == len(paths)
    assert len(set(table.column("row_id").to_pylist())) == len(paths)
    assert set(table.column("status").to_pylist()) == {"ok"}, table.column("reason").value_counts()
