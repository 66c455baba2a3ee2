"""Incremental runs (``output.previous``): carried rows equal a full recompute; refusals before any work.

One module-scoped scenario: a dozen 48-px images run in full, then changed (added, deleted,
modified in place, renamed, a broken one fixed, one left broken), then run twice more: once
incremental on the first output, once in full; the two must hold the same rows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import samples
from pipeline.errors import ConfigError
from pipeline.outputs.layout import MANIFEST
from pipeline.run.job import run_job

SMALL = {
    "preprocess__resize_size": 48,
    "preprocess__crop_size": 48,
    "preprocess__batch_size": 4,
    "inference__batch_size": 4,
    "output__rows_per_file": 4,
}
COMPARED = ["row_id", "uri", "status", "reason", "top_k_ids", "top_k_labels", "label", "model_sha256"]


def _image(path: Path, seed: int) -> None:
    """A 48-px photo-like JPEG."""
    path.write_bytes(samples.jpeg_bytes(samples.photo_like(np.random.default_rng(seed), 48, 48)))


def _rows(out: Path) -> pa.Table:
    """Every part of an output, sorted by row id."""
    return pq.read_table(out / "data").sort_by("row_id")


@pytest.fixture(scope="module")
def scenario(ray_session: None, local_config: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first output, the changes, then the incremental output and a full recompute of the same inputs."""
    root = tmp_path_factory.mktemp("incremental")
    images = root / "images"
    images.mkdir()
    for index in range(10):
        _image(images / f"img-{index:02d}.jpg", index)
    (images / "broken-fixed.jpg").write_bytes(b"not an image yet")
    (images / "broken-kept.jpg").write_bytes(b"not an image, and stays so")

    def config(out: str, **extra: object) -> Any:
        return local_config(images, root / out, **{**SMALL, **extra})

    first = run_job(config("night-1"))
    _image(images / "new-a.jpg", 100)  # added
    _image(images / "new-b.jpg", 101)
    (images / "img-00.jpg").unlink()  # deleted
    _image(images / "img-01.jpg", 201)  # modified in place (other bytes, later mtime)
    later = (images / "img-01.jpg").stat().st_mtime + 10
    os.utime(images / "img-01.jpg", (later, later))
    (images / "img-02.jpg").rename(images / "img-02-renamed.jpg")  # renamed
    _image(images / "broken-fixed.jpg", 300)  # a failed image fixed
    incremental = run_job(config("night-2", output__previous=str(root / "night-1")))
    full = run_job(config("night-2-full"))
    for summary in (first, incremental, full):
        print("PHASES", summary.seconds, summary.phases)
    return {
        "root": root,
        "images": images,
        "config": config,
        "first": first,
        "incremental": incremental,
        "full": full,
    }


class TestIncremental:
    def test_equals_full_recompute_row_for_row(self, scenario: dict[str, Any]) -> None:
        """Over added, deleted, modified, renamed and fixed inputs the incremental output is a full recompute's."""
        inc, full = _rows(scenario["root"] / "night-2"), _rows(scenario["root"] / "night-2-full")
        assert inc.num_rows == full.num_rows == 13
        assert inc.select(COMPARED).to_pylist() == full.select(COMPARED).to_pylist()
        np.testing.assert_allclose(
            np.array(inc.column("score").to_pylist(), dtype=float),
            np.array(full.column("score").to_pylist(), dtype=float),
            rtol=0,
            atol=1e-5,
        )

    def test_counts_in_manifest_and_summary(self, scenario: dict[str, Any]) -> None:
        """Carried, computed, retried and dropped are counted in _SUCCESS and the summary, with the previous URI."""
        root, summary = scenario["root"], scenario["incremental"]
        manifest = json.loads((root / "night-2" / MANIFEST).read_text())
        counts = manifest["incremental"]
        # 13 inputs: 2 added, 1 modified, 1 renamed, 1 fixed and 1 failed before (retried) are computed.
        expected = {"carried": 7, "computed": 6, "retried": 1, "dropped": 2}
        assert {key: counts[key] for key in expected} == expected
        assert counts["previous"] == str(root / "night-1")
        assert counts["parts_copied"] >= 1  # parts whose every row is current are copied whole
        assert summary.incremental == counts
        assert summary.processed_this_run == 6
        assert manifest["counts"] == {"inputs": 13, "succeeded": 12, "failed": 1}
        assert "7 carried, 6 computed (1 retried), 2 dropped" in summary.render()

    def test_carried_rows_are_the_previous_ones(self, scenario: dict[str, Any]) -> None:
        """Carried rows keep the run id of the run that computed them: their images were not read again."""
        inc = _rows(scenario["root"] / "night-2")
        by_run = dict(zip(inc.column("uri").to_pylist(), inc.column("run_id").to_pylist(), strict=True))
        first, second = scenario["first"].run_id, scenario["incremental"].run_id
        images = scenario["images"]
        assert by_run[str(images / "img-03.jpg")] == first
        assert by_run[str(images / "img-01.jpg")] == second  # modified
        assert by_run[str(images / "new-a.jpg")] == second
        assert by_run[str(images / "broken-kept.jpg")] == second  # retried

    def test_previous_not_committed_is_refused(self, scenario: dict[str, Any]) -> None:
        """A previous output without _SUCCESS is refused before anything is written."""
        root = scenario["root"]
        uncommitted = root / "uncommitted"
        shutil.copytree(root / "night-1", uncommitted)
        (uncommitted / MANIFEST).unlink()
        with pytest.raises(ConfigError, match="not committed") as refused:
            run_job(scenario["config"]("refused-1", output__previous=str(uncommitted)))
        assert refused.value.key == "output.previous"
        assert not (root / "refused-1" / "_inputs.parquet").exists()

    def test_missing_previous_fails_by_default(self, scenario: dict[str, Any]) -> None:
        """Nothing at output.previous fails (exit 2) unless output.previous_missing=full_run."""
        root = scenario["root"]
        with pytest.raises(ConfigError, match="nothing is there"):
            run_job(scenario["config"]("refused-2", output__previous=str(root / "no-such-night")))

    def test_other_config_is_refused_or_recomputed(self, scenario: dict[str, Any]) -> None:
        """A previous output of another configuration is refused (a full run is needed) or, if accepted, recomputed."""
        root = scenario["root"]
        other = {"preprocess__crop_size": 32, "output__previous": str(root / "night-1")}
        with pytest.raises(ConfigError, match="a full run is needed"):
            run_job(scenario["config"]("refused-3", **other))
        summary = run_job(scenario["config"]("recomputed", **other, output__previous_other_config="recompute"))
        assert summary.processed_this_run == 13
        assert "every input is computed" in summary.incremental["full_run"]
        manifest = json.loads((root / "recomputed" / MANIFEST).read_text())
        assert manifest["incremental"]["full_run"] == summary.incremental["full_run"]
