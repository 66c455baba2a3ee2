"""models: one decode, two models in one actor, one committed output per model equal to its own run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.tiny_models import torchvision_weights

from pipeline.config import load_config

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.run.summary import RunSummary

SECOND = "mobilenet_v3_small"  # the embedder beside the session's resnet18 classifier
COMMON = [
    "inference.precision=fp32",
    "logging.progress=off",
    "output.max_failure_fraction=1.0",
    "resources.stall_timeout_s=300",
]


@pytest.fixture(scope="module")
def second_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV3-small state dict with fixed random weights, as safetensors."""
    return torchvision_weights(tmp_path_factory.mktemp("second") / f"{SECOND}.safetensors", SECOND, seed=5)


def _models(weights_file: Path, second: Path) -> str:
    return (
        f"models=[{{name: resnet18, weights: '{weights_file}', output: current}},"
        f" {{name: {SECOND}, weights: '{second}', task: embed, output: vectors}}]"
    )


def _config(images: Path, out: Path, *items: str) -> Config:
    return load_config(None, [f"input.uri={images}", f"output.uri={out}", *COMMON, *items], environ={})


@pytest.fixture(scope="module")
def runs(
    reported_run: tuple[Path, RunSummary],
    sample_images: Path,
    weights_file: Path,
    second_weights: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, RunSummary, dict[str, Path]]:
    """One two-model run of the sample images (three broken), and each model's own run of them:
    the session's resnet18 run (``reported_run``, shared with other modules) and the embedder's."""
    from pipeline.run.job import run_job

    root = tmp_path_factory.mktemp("multi-runs")
    summary = run_job(_config(sample_images, root / "both", _models(weights_file, second_weights)))
    embed = [f"model.name={SECOND}", f"model.weights={second_weights}", "model.task=embed"]
    run_job(_config(sample_images, root / "vectors", *embed))
    return root / "both", summary, {"current": reported_run[0], "vectors": root / "vectors"}


def _rows(output: Path) -> dict[str, dict[str, object]]:
    table = pq.read_table(output / "data")
    return {row["row_id"]: row for row in table.to_pylist()}


def _assert_same_predictions(
    name: str, got: dict[str, dict[str, object]], want: dict[str, dict[str, object]]
) -> None:
    """Row by row: same uri, status and reason; ok rows the same top-k (``current``) or vectors (fp32)."""
    for row_id, row in want.items():
        mine = got[row_id]
        assert (mine["status"], mine["reason"], mine["uri"]) == (row["status"], row["reason"], row["uri"])
        if row["status"] != "ok":
            continue
        if name == "current":
            assert mine["top_k_ids"] == row["top_k_ids"], row["uri"]
            np.testing.assert_allclose(mine["top_k_scores"], row["top_k_scores"], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(mine["embedding"], row["embedding"], rtol=1e-4, atol=1e-5)


def test_each_output_equals_its_single_model_run(runs):
    """Each model's rows from the two-model run are its single-model run's rows (fp32: same predictions)."""
    both, _, alone = runs
    for name, single in alone.items():
        got, want = _rows(both / name), _rows(single)
        assert set(got) == set(want)
        schemas = [pq.read_schema(next((out / "data").glob("*.parquet"))) for out in (both / name, single)]
        assert schemas[0].remove_metadata() == schemas[1].remove_metadata()  # no other model's column
        _assert_same_predictions(name, got, want)


def test_each_output_is_committed_with_its_single_model_hash(runs):
    """Each model's _SUCCESS carries the config hash its own run committed, and the shared decode it got."""
    both, summary, alone = runs
    assert summary.status == "succeeded"
    for name, single in alone.items():
        mine = json.loads((both / name / "_SUCCESS").read_text())
        own = json.loads((single / "_SUCCESS").read_text())
        assert mine["config_hash"] == own["config_hash"]
        assert mine["counts"] == own["counts"]
        assert mine["failed_by_reason"] == own["failed_by_reason"]
        assert own["counts"]["failed"] > 0  # the broken samples: failed in each output alike
        assert mine["model"]["shared_decode"]["resized_to"] == 224
        assert (both / name / "_inputs.parquet").exists()
    assert (both / "_multi" / "_SUCCESS").exists()


def test_each_input_is_decoded_once(runs):
    """Two models, one decode per input: the run's decoded count equals its inputs."""
    _, summary, _ = runs
    assert summary.decoded == summary.inputs > 0


def test_a_crash_between_the_commits_is_completed_without_recomputing(
    runs, sample_images, weights_file, second_weights, tmp_path
):
    """One output committed, one not (its _SUCCESS and a part lost): a rerun commits it, computing nothing."""
    from pipeline.run.job import run_job

    both, first, _ = runs
    crashed = tmp_path / "crashed"
    shutil.copytree(both, crashed)
    (crashed / "vectors" / "_SUCCESS").unlink()
    (crashed / "_multi" / "_SUCCESS").unlink()
    next((crashed / "vectors" / "data").glob("*.parquet")).write_bytes(b"cut short")
    committed = (crashed / "current" / "_SUCCESS").read_bytes()
    summary = run_job(_config(sample_images, crashed, _models(weights_file, second_weights)))
    assert (summary.status, summary.run_id) == ("succeeded", first.run_id)
    assert (summary.processed_this_run, summary.decoded) == (0, 0)
    assert (crashed / "current" / "_SUCCESS").read_bytes() == committed  # left as it was
    assert _rows(crashed / "vectors").keys() == _rows(both / "vectors").keys()
    assert json.loads((crashed / "vectors" / "_SUCCESS").read_text())["counts"]["inputs"] == first.inputs


def test_a_model_output_holding_another_run_is_refused_before_any_work(
    runs, sample_images, weights_file, second_weights, tmp_path
):
    """A model's folder holding another run's commit: exit 3 before anything is computed or written."""
    from pipeline.errors import OutputExistsError
    from pipeline.run.job import run_job

    _, _, alone = runs
    shutil.copytree(alone["vectors"], tmp_path / "out" / "vectors")
    with pytest.raises(OutputExistsError, match="vectors"):
        run_job(_config(sample_images, tmp_path / "out", _models(weights_file, second_weights)))
    assert not (tmp_path / "out" / "current" / "data").exists()
    assert not (tmp_path / "out" / "_multi" / "data").exists()


@pytest.fixture(scope="module")
def pooled(
    runs: tuple[Path, RunSummary, dict[str, Path]],
    sample_images: Path,
    weights_file: Path,
    second_weights: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, RunSummary]:
    """The same two models forced into two chained actor pools (resources.model_groups)."""
    from pipeline.run.job import run_job

    out = tmp_path_factory.mktemp("pooled") / "both"
    groups = "resources.model_groups=[[current], [vectors]]"
    return out, run_job(_config(sample_images, out, _models(weights_file, second_weights), groups))


def test_separate_pools_write_what_the_shared_actor_writes(runs, pooled):
    """Two models in two actor pools: each output's rows are the one-actor run's, every input decoded once."""
    shared, _, _ = runs
    out, summary = pooled
    assert summary.status == "succeeded"
    assert summary.decoded == summary.inputs > 0  # the second pool got the first pool's decoded crops
    for name in ("current", "vectors"):  # each model's _SUCCESS names who shared its actor
        assert json.loads((out / name / "_SUCCESS").read_text())["model"]["actor_pool"] == [name]
        assert json.loads((shared / name / "_SUCCESS").read_text())["model"]["actor_pool"] == [
            "current",
            "vectors",
        ]
    combined = [pq.read_schema(next((root / "_multi" / "data").glob("*.parquet"))) for root in (out, shared)]
    assert combined[0].names == combined[1].names  # every model's columns, in the config's order
    for name in ("current", "vectors"):
        got, want = _rows(out / name), _rows(shared / name)
        assert set(got) == set(want)
        assert sum(row["status"] != "ok" for row in got.values()) > 0  # the broken files passed through
        _assert_same_predictions(name, got, want)
