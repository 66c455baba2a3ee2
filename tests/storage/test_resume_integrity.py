"""A killed run resumes only as itself: same weights' bytes, same inputs, and parts that read back.

One ``python -m pipeline run`` on a local folder is killed with SIGKILL (its whole process
group) once three parts are written; each test starts from a copy of what it left, at the same
paths (the run's inputs and weights are named by absolute path), changes what it is about
(the weights' bytes, the inputs, a part, a leftover temporary file), and resumes in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import committed_checkpoints, kill_group
from helpers.tiny_models import torchvision_weights
from storage_s3 import KILLABLE_PACE

from pipeline.cli import samples
from pipeline.config import Config, dump_yaml
from pipeline.errors import InputError, PipelineError
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow

IMAGES = 96
KILL_AFTER_PARTS = 3
DEADLINE_S = 300.0


def make_weights(path: Path, seed: int) -> None:
    """Random-init weights of the test model, different per seed."""
    torchvision_weights(path, "resnet18", seed)


@pytest.fixture(scope="module")
def killed_template(tmp_path_factory: pytest.TempPathFactory, local_config) -> tuple[Path, Path]:
    """(work folder, its pristine copy): images, weights and an output a SIGKILL left after three parts."""
    root = tmp_path_factory.mktemp("killed")
    work = root / "work"
    samples.make_images(
        work / "images", IMAGES, seed=11, sizes=((160, 120), (120, 160)), png_every=0, broken=False
    )
    make_weights(work / "weights.safetensors", seed=5)
    make_weights(root / "other.safetensors", seed=6)
    config = local_config(
        work / "images",
        work / "out",
        model__weights=str(work / "weights.safetensors"),
        **{
            key: value
            for key, value in KILLABLE_PACE.items()
            if key != "resources__object_store_memory_bytes"
        },
    )
    (work / "job.yaml").write_text(dump_yaml(config), encoding="utf-8")
    log = root / "killed.log"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with log.open("wb") as handle:
        job = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--config", str(work / "job.yaml")],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(committed_checkpoints(work / "out")) < KILL_AFTER_PARTS:
            assert job.poll() is None, f"the run ended before the kill:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no parts written in time"
            time.sleep(0.05)
    finally:
        kill_group(job)
    assert not (work / "out" / "_SUCCESS").exists(), "killed after its commit: nothing left to resume"
    shutil.copytree(work, root / "template")
    return work, root / "template"


@pytest.fixture
def killed(killed_template, local_config) -> tuple[Path, Config]:
    """A fresh copy of the killed run's folder (at the same paths), and the config that resumes it."""
    work, template = killed_template
    shutil.rmtree(work)
    shutil.copytree(template, work)
    # At full speed: the pace that let the kill land between parts is not part of the config hash.
    config = local_config(
        work / "images",
        work / "out",
        model__weights=str(work / "weights.safetensors"),
        preprocess__resize_size=KILLABLE_PACE["preprocess__resize_size"],
        preprocess__crop_size=KILLABLE_PACE["preprocess__crop_size"],
    )
    return work, config


def rows(out: Path) -> list[dict[str, object]]:
    """Every row of the output's parts (row_id, uri, model_sha256)."""
    return pq.read_table(out / "data", columns=["row_id", "uri", "model_sha256"]).to_pylist()


def assert_exactly_once(out: Path, images: Path) -> None:
    """Every image of the folder is in the parts once, and nothing else is."""
    found = [row["uri"] for row in rows(out)]
    assert len(found) == len(set(found))
    assert sorted(found) == sorted(str(p) for p in images.rglob("*.jpg"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TestWeights:
    def test_other_bytes_at_the_same_path_refuse_the_resume(self, ray_session, killed, killed_template):
        """Weights replaced at the same path: refused, naming both checksums; the same bytes again resume."""
        work, config = killed
        weights = work / "weights.safetensors"
        original, before = sha256(weights), sorted(p.name for p in (work / "out" / "data").iterdir())
        shutil.copyfile(killed_template[1].parent / "other.safetensors", weights)
        with pytest.raises(
            PipelineError, match=f"weights sha256 {original}.*now holds sha256 {sha256(weights)}"
        ):
            run_job(config)
        assert sorted(p.name for p in (work / "out" / "data").iterdir()) == before  # nothing written
        shutil.copyfile(killed_template[1] / "weights.safetensors", weights)  # same bytes, a new file
        summary = run_job(config)
        assert (summary.status, summary.resumed) == ("succeeded", True)
        assert {row["model_sha256"] for row in rows(work / "out")} == {original}
        manifest = json.loads((work / "out" / "_SUCCESS").read_text())
        assert manifest["model"]["sha256"] == original
        assert manifest["config_hash"] == config.config_hash(original) != config.config_hash()
        assert_exactly_once(work / "out", work / "images")

    def test_a_run_started_before_the_hash_covered_the_weights_resumes_on_the_same_bytes(
        self, ray_session, killed, killed_template
    ):
        """An older _run.json (settings-only hash): resumed if its parts hold these weights, else refused."""
        work, config = killed
        state_path = work / "out" / "_run.json"
        state = json.loads(state_path.read_text())
        older = {key: value for key, value in state.items() if key != "weights_sha256"}
        state_path.write_text(json.dumps({**older, "config_hash": config.config_hash()}))
        shutil.copyfile(killed_template[1].parent / "other.safetensors", work / "weights.safetensors")
        with pytest.raises(PipelineError, match="one output cannot mix two models"):
            run_job(config)
        shutil.copyfile(killed_template[1] / "weights.safetensors", work / "weights.safetensors")
        summary = run_job(config)
        assert (summary.status, summary.resumed) == ("succeeded", True)
        original = sha256(work / "weights.safetensors")
        upgraded = json.loads(state_path.read_text())
        assert upgraded["weights_sha256"] == original
        assert upgraded["config_hash"] == config.config_hash(original)
        assert_exactly_once(work / "out", work / "images")


class TestInputs:
    def test_inputs_changed_since_the_crash_refuse_the_resume(self, ray_session, killed):
        """An added, a removed and a rewritten image: refused (exit 2) naming each; as before, it resumes."""
        work, config = killed
        images = sorted((work / "images").rglob("*.jpg"))
        moved, rewritten = images[0], images[1]
        kept = moved.read_bytes(), rewritten.read_bytes(), rewritten.stat()
        moved.rename(work / "moved.jpg")
        rewritten.write_bytes(kept[1] + b"\0")
        added = work / "images" / "late.jpg"
        shutil.copyfile(images[2], added)
        with pytest.raises(InputError) as caught:
            run_job(config)
        message = str(caught.value)
        assert caught.value.exit_code == 2
        assert f"1 added ({added})" in message
        assert f"1 removed ({moved})" in message
        assert f"1 rewritten (size or modification time differ) ({rewritten})" in message
        added.unlink()
        (work / "moved.jpg").rename(moved)
        rewritten.write_bytes(kept[1])
        os.utime(rewritten, ns=(kept[2].st_atime_ns, kept[2].st_mtime_ns))
        summary = run_job(config)
        assert (summary.status, summary.resumed) == ("succeeded", True)
        assert_exactly_once(work / "out", work / "images")


class TestDamagedParts:
    def test_deleted_truncated_and_replaced_parts_are_redone(self, ray_session, killed):
        """Parts deleted, cut short, or holding another part's rows after they were written: redone, once."""
        work, config = killed
        parts = sorted((work / "out" / "data").glob("part-*.parquet"))
        assert len(parts) >= KILL_AFTER_PARTS
        lost = sum(pq.read_metadata(part).num_rows for part in parts[:3])
        written = sum(pq.read_metadata(part).num_rows for part in parts)
        parts[2].write_bytes(parts[0].read_bytes())  # rows its checkpoint does not list
        parts[0].unlink()
        data = parts[1].read_bytes()
        parts[1].write_bytes(data[: len(data) // 2])
        summary = run_job(config)
        assert summary.status == "succeeded"
        assert summary.processed_this_run == IMAGES - written + lost
        assert_exactly_once(work / "out", work / "images")
        assert not [part for part in parts[:3] if part.exists()]


class TestLeftovers:
    def test_a_manifest_temporary_left_by_a_kill_is_removed(self, ray_session, killed):
        """A kill during the commit leaves ._SUCCESS.<random>.tmp: the rerun deletes it and commits."""
        work, config = killed
        out = work / "out"
        leftovers = [out / "._SUCCESS.k2j3x9.tmp", out / "data" / ".part-x.parquet.a1b2.tmp"]
        for path in leftovers:
            path.write_bytes(b'{"run_id": "cut sh')
        lease_temp = out / "_lease" / ".epoch-000009.json.zz.tmp"  # a live job's renewal in progress: kept
        lease_temp.parent.mkdir(exist_ok=True)
        lease_temp.write_bytes(b"{}")
        summary = run_job(config)
        assert summary.status == "succeeded"
        assert not [path for path in leftovers if path.exists()]
        assert lease_temp.exists()
        assert_exactly_once(out, work / "images")

    def test_a_run_killed_before_it_described_itself_starts_again(
        self, ray_session, sample_images, make_config
    ):
        """An empty data/, a cut _inputs.parquet, no _run.json, as a kill leaves them: a new run commits."""
        config = make_config(sample_images)
        out = Path(config.output.uri)
        (out / "data").mkdir(parents=True)
        (out / "_inputs.parquet").write_bytes(b"PAR1\x15\x04")
        summary = run_job(config)
        assert summary.status == "succeeded"
        assert summary.inputs == 43
        assert json.loads((out / "_run.json").read_text())["run_id"] == summary.run_id

    def test_data_this_pipeline_did_not_describe_is_still_refused(
        self, ray_session, sample_images, make_config
    ):
        """Parts under data/ with no _run.json (not ours, or state lost) are refused as before, exit 3."""
        config = make_config(sample_images)
        out = Path(config.output.uri)
        (out / "data").mkdir(parents=True)
        (out / "data" / "part-x-0.parquet").write_bytes(b"PAR1")
        with pytest.raises(PipelineError, match=r"no _run\.json"):
            run_job(config)
        assert (out / "data" / "part-x-0.parquet").read_bytes() == b"PAR1"  # left as it was
