"""`pipeline bench` runs end to end at a small size (a smoke test: no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

FIELDS = {
    "a_model_only_images_per_second",
    "b_decode_images_per_second_per_core",
    "c_ideal_images_per_second",
    "d_pipeline_end_to_end_images_per_second",
    "d_pipeline_steady_images_per_second",
    "d_pipeline_whole_command_images_per_second",
    "e_naive_images_per_second",
    "ratio_end_to_end_to_ideal",
    "ratio_whole_command_to_ideal",
    "ratio_steady_to_ideal",
    "ratio_end_to_end_to_naive",
    "peak_memory_bytes",
    "top1_agreement_with_fp32",
    "precision",
    "batch_size",
    "resource_plan",
    "process_start_seconds",
    "ray_start_seconds",
    "pipeline_timeline_seconds",
}


def test_bench_writes_every_field(tmp_path):
    """The JSON has every field the issue lists, each a real measurement (positive rate, 0-1 agreement)."""
    out = tmp_path / "bench.json"
    args = [
        "--images",
        "24",
        "--naive-images",
        "3",
        "--model",
        "resnet18",
        "--model-seconds",
        "1",
        "--batch-size",
        "8",
        "--memory-check",
        "--set",
        "preprocess.batch_size=6",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", *args, "--workdir", str(tmp_path), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data) >= FIELDS
    for key in FIELDS:
        if key.endswith("per_second"):
            assert data[key] > 0, key
    assert 0.0 <= data["top1_agreement_with_fp32"] <= 1.0
    assert len(data["a_model_only_before_and_after_d"]) == 2
    assert min(data["a_model_only_before_and_after_d"]) <= data["a_model_only_images_per_second"]
    assert data["a_model_only_images_per_second"] <= max(data["a_model_only_before_and_after_d"])
    timeline = data["pipeline_timeline_seconds"]
    assert 0 < timeline["first_batch"] <= timeline["written"] <= timeline["committed"]
    assert timeline["committed"] <= data["pipeline_seconds"]
    assert data["ratio_whole_command_to_ideal"] < data["ratio_end_to_end_to_ideal"]
    assert data["process_start_seconds"] > 0
    assert data["ray_start_seconds"] > 0
    assert data["peak_memory_bytes"] > 100 * 2**20
    assert data["images"] == 24
    assert data["overrides"] == ["preprocess.batch_size=6"]
    assert data["resource_plan"]["decode_batch_size"] == 6  # --set reached the job
    check = data["memory_check"]  # the same job over 4x the images
    assert check["images"] == 96
    assert check["peak_memory_bytes"] > 100 * 2**20
    assert 0.5 < check["growth_ratio"] < 4  # 4x the images must not mean 4x the memory
    assert len(check["a_model_only_before_and_after_d"]) == 2
    assert check["c_ideal_images_per_second"] > 0
    assert check["end_to_end_images_per_second"] > 0
    assert 0 < check["ratio_end_to_end_to_ideal"] <= 1.5
    assert "(c) ideal" in result.stdout


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("preprocess.decode_device=gpu", "with `pipeline run --set preprocess.decode_device=gpu`"),
        ("preprocess.batch_size=0", "config key 'preprocess.batch_size': got"),
    ],
)
def test_bench_refuses_a_bad_setting_before_making_images(tmp_path, override, expected):
    """A --set the bench cannot honour stops it with exit 2 and the key, before any image is made.

    (b) is decode on CPU cores, so GPU decode is refused with a pointer to what times it.
    """
    args = ["--set", override, "--images", "8", "--workdir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_ideal_is_the_slower_stage_on_a_gpu_and_shared_cores_on_a_cpu():
    """(c): a GPU fed by 8 cores at 100 img/s each is held to the slower of 500 and 800; on a CPU the
    model (10 img/s) and decoding (2 cores x 10) take turns on the same cores: 1/(1/10 + 1/20)."""
    from pipeline.cli.bench import ideal_rate

    assert ideal_rate(500.0, 100.0, 8, "cuda") == 500.0
    assert ideal_rate(2000.0, 100.0, 8, "cuda") == 800.0
    assert ideal_rate(10.0, 10.0, 2, "cpu") == pytest.approx(20 / 3)


def test_bench_embed_times_the_embedding_task(tmp_path):
    """``--task embed`` runs every measurement on the embed model; precision is checked by cosine."""
    out = tmp_path / "bench.json"
    args = ["--task", "embed", "--images", "16", "--naive-images", "2", "--model", "resnet18"]
    args += ["--model-seconds", "1", "--batch-size", "8", "--precision", "bf16"]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", *args, "--workdir", str(tmp_path), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["task"] == "embed"
    assert data["top1_agreement_with_fp32"] is None
    assert 0.99 <= data["embedding_min_cosine_with_fp32"] <= 1.0 + 1e-6
    assert data["d_pipeline_end_to_end_images_per_second"] > 0
    manifest = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert manifest["model"]["task"] == "embed"
    assert "cosine vs fp32" in result.stdout
