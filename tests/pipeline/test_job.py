"""The job end to end on the real Ray Data path, checked against plain torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch_oracle import reference_inputs, reference_model

from pipeline.inputs import row_ids
from pipeline.inputs.listing import list_inputs
from pipeline.outputs.layout import DATA_DIR, FAILURES, MANIFEST, OutputLocation
from pipeline.run.job import run_job

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.run.summary import RunSummary

pytestmark = pytest.mark.slow


def _read_output(out: Path) -> dict[str, dict]:
    table = pq.read_table(out / DATA_DIR)
    return {row["uri"]: row for row in table.to_pylist()}


def _reference(config, uris: list[str], weights: Path) -> dict[str, tuple[int, float]]:
    """Top-1 id and score per good image, computed in one process with plain torch in fp32."""
    model = reference_model(config, weights)
    expected = {}
    for uri, x in reference_inputs(config, uris):
        with torch.inference_mode():
            score, index = torch.softmax(model(x), dim=1).max(dim=1)
        expected[uri] = (int(index), float(score))
    return expected


@pytest.fixture(scope="module")
def default_run(ray_session, sample_images, local_config, tmp_path_factory) -> tuple[Config, RunSummary]:
    """One run of the sample images with the default (fp32) config: its config and summary.

    Read, never changed, by the tests below that pin what such a run writes.
    """
    config = local_config(sample_images, tmp_path_factory.mktemp("default-run") / "out")
    return config, run_job(config)


class TestRunJob:
    def test_predictions_match_single_process_torch(self, default_run, sample_images, weights_file):
        """Every good row's top-1 id is identical to plain torch's and its score within 1e-4 (fp32)."""
        config, summary = default_run
        rows = _read_output(Path(config.output.uri))
        uris = list_inputs(config.input, config.storage).uris
        expected = _reference(config, uris, weights_file)
        assert len(expected) == 40
        for uri, (index, score) in expected.items():
            row = rows[uri]
            assert row["status"] == "ok", row
            assert row["top_k_ids"][0] == index, uri
            assert row["score"] == pytest.approx(score, abs=1e-4), uri
            assert row["top_k_scores"] == sorted(row["top_k_scores"], reverse=True)
            assert len(row["top_k_ids"]) == config.model.top_k
        assert summary.succeeded == 40

    def test_nothing_is_lost(self, default_run, sample_images):
        """Output rows equal input files, each row id once, and every broken file has a reason."""
        config, summary = default_run
        out = Path(config.output.uri)
        table = pq.read_table(out / DATA_DIR)
        files = sorted(str(p) for p in sample_images.rglob("*") if p.is_file())
        assert sorted(table.column("uri").to_pylist()) == files
        ids = table.column("row_id").to_pylist()
        assert len(ids) == len(set(ids)) == len(files)
        assert ids == [row_ids.row_id(uri) for uri in table.column("uri").to_pylist()]
        rows = _read_output(out)
        expected_reasons = {
            "empty.jpg": "empty_file",
            "not-an-image.jpg": "not_an_image",
            "truncated.jpg": "truncated",
        }
        for name, reason in expected_reasons.items():
            row = rows[str(sample_images / "broken" / name)]
            assert (row["status"], row["reason"]) == ("failed", reason)
            assert row["error"]
            assert row["top_k_ids"] is None
        failures = pq.read_table(out / FAILURES)
        assert failures.num_rows == 3
        assert summary.failed_by_reason == {"empty_file": 1, "not_an_image": 1, "truncated": 1}
        assert summary.succeeded + summary.failed == summary.inputs == len(files)
        # What pyarrow, pandas, DuckDB and Spark see of the output folder: test_readers.py.

    def test_manifest_is_written_last_with_counts(self, default_run):
        """The _SUCCESS manifest records counts, config hash, model checksum and versions."""
        config, _ = default_run
        location = OutputLocation.open(config.output.uri, config.storage)
        manifest = location.read_json(MANIFEST)
        assert manifest["counts"] == {"inputs": 43, "succeeded": 40, "failed": 3}
        assert manifest["config_hash"] == config.config_hash(manifest["model"]["sha256"])
        assert len(manifest["model"]["sha256"]) == 64
        assert manifest["model"]["random_init"] is False
        assert (manifest["model"]["task"], manifest["model"]["embedding"]) == ("classify", None)
        assert set(manifest["versions"]) >= {"pipeline", "ray", "torch", "torchvision", "python"}
        parts = list((Path(config.output.uri) / DATA_DIR).glob("part-*.parquet"))
        manifest_mtime = (Path(config.output.uri) / MANIFEST).stat().st_mtime
        assert parts
        assert all(part.stat().st_mtime <= manifest_mtime for part in parts)

    def test_random_init_is_flagged(self, ray_session, sample_images, make_config):
        """A random-init run says so in the manifest's warnings and model metadata."""
        config = make_config(sample_images, model__weights="null", model__random_init="true", input__limit=8)
        run_job(config)
        manifest = OutputLocation.open(config.output.uri, config.storage).read_json(MANIFEST)
        assert manifest["model"]["random_init"] is True
        assert manifest["model"]["sha256"] == "random-init"
        assert manifest["warnings"]

    def test_decode_task_bigger_than_the_local_cluster_still_runs(
        self, ray_session, sample_images, make_config
    ):
        """decode_num_cpus=4 on the 2-CPU test cluster: capped to 2 and logged, where it used to stall."""
        config = make_config(
            sample_images, resources__decode_num_cpus=4, resources__stall_timeout_s=120, input__limit=8
        )
        summary = run_job(config)
        manifest = OutputLocation.open(config.output.uri, config.storage).read_json(MANIFEST)
        assert (summary.status, summary.succeeded + summary.failed) == ("succeeded", 8)
        assert manifest["resource_plan"]["decode_num_cpus"] == 2.0

    def test_bf16_agrees_with_fp32(self, default_run, sample_images, make_config, tmp_path):
        """The mixed-precision path keeps top-1 agreement with fp32 on at least 90% of images."""
        fp32, _ = default_run  # the same inputs and settings, in fp32
        bf16 = make_config(sample_images, output__uri=str(tmp_path / "bf16"), inference__precision="bf16")
        run_job(bf16)
        a, b = _read_output(Path(fp32.output.uri)), _read_output(tmp_path / "bf16")
        good = [uri for uri, row in a.items() if row["status"] == "ok"]
        agree = np.mean([a[u]["top_k_ids"][0] == b[u]["top_k_ids"][0] for u in good])
        score_error = max(abs(a[u]["score"] - b[u]["score"]) for u in good)
        assert agree >= 0.9
        assert score_error < 0.05
