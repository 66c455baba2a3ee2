"""Never delete what we did not write, never commit a row twice, never leave a short manifest.

Real files, real second processes (``python -m pipeline run``), moto S3, and a real
full filesystem (a tiny tmpfs) for the disk-full case.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from storage_s3 import job_environment, list_keys, read_json, read_parts, upload_images

from pipeline.config import StorageConfig
from pipeline.errors import ConfigError, InputError, ModelError, StorageError
from pipeline.outputs import layout, safety
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def images(sample_images: Path, tmp_path: Path) -> Path:
    """A private copy of the sample images (these tests point outputs at them)."""
    return Path(shutil.copytree(sample_images, tmp_path / "images"))


class TestOverwriteDeletesOnlyOurs:
    def test_output_equal_to_input_is_refused_and_nothing_deleted(self, ray_session, images, make_config):
        """output.uri == input folder: refused before any write, with or without --overwrite."""
        before = tree(images)
        config = make_config(images, output__uri=str(images))
        for overwrite in (False, True):
            with pytest.raises(ConfigError, match=r"output\.uri.*holds the input") as caught:
                run_job(config, overwrite=overwrite)
            assert caught.value.exit_code == 2
            assert tree(images) == before

    def test_output_holding_the_input_below_it_is_refused(self, ray_session, images, make_config):
        """An output folder that contains the input folder is refused too."""
        config = make_config(images, output__uri=str(images.parent))
        with pytest.raises(ConfigError, match="holds the input"):
            run_job(config, overwrite=True)
        assert len(tree(images)) > 40

    def test_output_with_foreign_files_is_refused_and_kept(self, ray_session, images, make_config, tmp_path):
        """A folder holding a user's files is refused (exit 2), even with --overwrite; the files stay."""
        out = tmp_path / "shared-folder"
        (out / "reports").mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
        (out / "reports" / "q3.parquet").write_bytes(b"PAR1 not ours")
        before = tree(out)
        config = make_config(images, output__uri=str(out))
        for overwrite in (False, True):
            with pytest.raises(ConfigError, match=r"2 file\(s\) this pipeline did not write \(notes\.txt"):
                run_job(config, overwrite=overwrite)
            assert tree(out) == before

    def test_clear_deletes_only_the_layout(self, tmp_path):
        """The overwrite's delete list is this pipeline's layout, never another name."""
        out = tmp_path / "out"
        ours = [
            "_SUCCESS",
            "_run.json",
            "_inputs.parquet",
            "_failures.parquet",
            "failures.parquet",  # where earlier versions kept it: still ours to clear
            "_summary-r1.json",
            "_checkpoint/attempt-001/part-r1-abc-000000.parquet",
            "data/part-r1-abc-000000-0.parquet",
            "data/._SUCCESS.k2j3.tmp",
        ]
        theirs = ["data/readme.md", "other.parquet", "data/sub/part-x.parquet", "_lease/epoch-000001.json"]
        for name in ours + theirs:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(b"x")
        location = layout.OutputLocation.open(str(out), StorageConfig())
        assert location.clear() == len(ours)
        assert sorted(tree(out)) == sorted(theirs)  # the lease is the running job's own: kept

    @pytest.mark.parametrize("breakage", ["bad_weights", "empty_input"])
    def test_overwrite_checks_before_it_deletes(self, ray_session, images, make_config, tmp_path, breakage):
        """A refused --overwrite (bad weights, empty input) leaves the last committed run as it was."""
        config = make_config(images)
        run_job(config)
        out = Path(config.output.uri)
        committed = tree(out)
        assert "_SUCCESS" in committed
        if breakage == "bad_weights":
            bad = tmp_path / "bad.safetensors"
            bad.write_bytes(b"not a safetensors file")
            broken, error = make_config(images, model__weights=str(bad)), ModelError
        else:
            (tmp_path / "empty").mkdir()
            broken, error = make_config(tmp_path / "empty"), InputError
        with pytest.raises(error) as caught:
            run_job(broken, overwrite=True)
        assert caught.value.exit_code == 2
        after = tree(out)
        summaries = [name for name in after if name.startswith("_summary-") and name not in committed]
        assert len(summaries) == 1  # the refused run says why, beside the run it left alone
        assert json.loads((out / summaries[0]).read_text())["status"] == "failed"
        assert {name: digest for name, digest in after.items() if name != summaries[0]} == committed


def start_cli(config_path: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m pipeline run`` in its own process group, output to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config_path)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=config_path.parent,
        start_new_session=True,
    )


def race(config_path: Path, tmp_path: Path, env: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """Start two runs of one config 0.2 s apart; return (exit code, log) of each, sorted by code."""
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = start_cli(config_path, logs[0], env)
    time.sleep(0.2)
    second = start_cli(config_path, logs[1], env)
    codes = [first.wait(timeout=600), second.wait(timeout=600)]
    return sorted(zip(codes, [log.read_text(errors="replace") for log in logs], strict=True))


class TestNesting:
    """An output inside its input, or an input inside its output, is refused: the next run over
    that input would list the predictions (or the output would hold the images)."""

    def test_output_inside_the_input_folder_is_refused_before_any_write(self, images, make_config):
        """output.uri under the input folder: exit 2 naming both; nothing is created there."""
        before = tree(images)
        config = make_config(images, output__uri=str(images / "predictions"))
        with pytest.raises(ConfigError, match=r"output\.uri.*inside the input") as caught:
            run_job(config)
        assert caught.value.exit_code == 2
        assert str(images) in str(caught.value)
        assert tree(images) == before
        assert not (images / "predictions").exists()

    def test_output_inside_the_input_through_a_symlink_is_refused(self, images, make_config, tmp_path):
        """The input named through a symlink, the output under the real folder: still inside it."""
        link = tmp_path / "photos"
        link.symlink_to(images)
        config = make_config(link, output__uri=str(images / "predictions"))
        with pytest.raises(ConfigError, match="inside the input"):
            run_job(config)
        assert not (images / "predictions").exists()

    def test_s3_output_inside_or_around_the_input_is_refused(self, s3, bucket, s3_config):
        """The same rule for prefixes: output under the input prefix (s3a:// too), input under the output."""
        upload_images(s3, bucket, "in", 2, broken=False)
        before = list_keys(s3, bucket, "")
        for output_uri in (f"s3://{bucket}/in/preds", f"s3a://{bucket}/in/preds/"):
            with pytest.raises(ConfigError, match="inside the input"):
                run_job(s3_config(bucket, output__uri=output_uri))
        with pytest.raises(ConfigError, match="holds the input"):
            run_job(
                s3_config(bucket, input__uri=f"s3://{bucket}/in/shard-0", output__uri=f"s3://{bucket}/in")
            )
        assert list_keys(s3, bucket, "") == before

    def test_a_sibling_prefix_sharing_the_name_is_not_inside(self, s3, bucket, s3_config):
        """s3://b/in-preds is beside s3://b/in, not inside it: the rule is by path segment."""
        config = s3_config(bucket, output__uri=f"s3://{bucket}/in-preds")
        location = layout.OutputLocation.open(config.output.uri, config.storage)
        safety.check_safe_target(location, f"s3://{bucket}/in")


class TestOneWriter:
    def test_two_local_runs_one_proceeds(self, images, make_config, write_config, tmp_path):
        """Two jobs on one local output: one commits every row once, the other exits 7 naming it."""
        config = make_config(images)
        (winner_code, winner_log), (loser_code, loser_log) = race(write_config(config), tmp_path)
        assert winner_code == 0, winner_log[-3000:]
        assert loser_code == 7, loser_log[-3000:]
        assert "is in use by" in loser_log
        assert "Traceback" not in loser_log
        out = Path(config.output.uri)
        manifest = json.loads((out / "_SUCCESS").read_text())
        assert loser_log.count(manifest["run_id"]) >= 1 or "not chosen its run id yet" in loser_log
        table = pq.read_table(out / "data")
        assert table.num_rows == manifest["counts"]["inputs"] == 43
        assert len(set(table.column("row_id").to_pylist())) == 43
        assert len(list(out.glob("_summary-*.json"))) == 1
        assert not list((out / "_lease").glob("*"))  # released

    def test_two_s3_runs_one_proceeds(self, s3, bucket, s3_config, write_config, tmp_path):
        """The same race on an S3 output (conditional create on moto): exactly one writer."""
        upload_images(s3, bucket, "in", 12)
        config_path = write_config(s3_config(bucket))
        (winner_code, winner_log), (loser_code, loser_log) = race(config_path, tmp_path, job_environment())
        assert winner_code == 0, winner_log[-3000:]
        assert loser_code == 7, loser_log[-3000:]
        assert "is in use by" in loser_log
        manifest = read_json(s3, bucket, "out/_SUCCESS")
        table = read_parts(s3, bucket, "out")
        assert table.num_rows == manifest["counts"]["inputs"] == 14
        assert len(set(table.column("row_id").to_pylist())) == 14
        assert len([key for key in list_keys(s3, bucket, "out/") if "/_summary-" in key]) == 1


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A real, small filesystem to fill up; skipped where mounting is not allowed (not root)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> None:
    """Write until the filesystem says it is full."""
    with (
        (folder / f"filler-{uuid.uuid4().hex}").open("wb", buffering=0) as handle,
        contextlib.suppress(OSError),
    ):
        while True:
            handle.write(b"\0" * 4096)


class TestAtomicManifest:
    def test_disk_full_leaves_no_short_manifest(self, tmp_path):
        """On a full disk the manifest write fails and leaves nothing a reader could take for a commit."""
        with tiny_tmpfs(tmp_path / "disk") as disk:
            location = layout.OutputLocation.open(str(disk / "out"), StorageConfig())
            location.prepare()
            fill(disk)
            with pytest.raises(StorageError, match=r"cannot write .*_SUCCESS"):
                location.write_json(layout.MANIFEST, {"run_id": "r", "layout": {"files": ["x" * 100] * 200}})
            assert not (disk / "out" / "_SUCCESS").exists()
            assert [p.name for p in (disk / "out").iterdir()] == ["data"]  # no temporary left behind

    def test_disk_full_keeps_the_previous_version(self, tmp_path):
        """Replacing a JSON file on a full disk keeps the old, complete file."""
        with tiny_tmpfs(tmp_path / "disk") as disk:
            location = layout.OutputLocation.open(str(disk / "out"), StorageConfig())
            location.write_json(layout.RUN_STATE, {"run_id": "before"})
            fill(disk)
            with pytest.raises(StorageError):
                location.write_json(layout.RUN_STATE, {"run_id": "after", "pad": "x" * 20000})
            assert location.read_json(layout.RUN_STATE) == {"run_id": "before"}

    def test_rerun_recovers_from_an_empty_manifest(self, ray_session, images, make_config):
        """A 0-byte _SUCCESS (left by an older version) is no commit: the rerun resumes and commits."""
        config = make_config(images)
        first = run_job(config)
        out = Path(config.output.uri)
        (out / "_SUCCESS").write_bytes(b"")
        second = run_job(config)
        manifest = json.loads((out / "_SUCCESS").read_text())
        assert second.run_id == first.run_id == manifest["run_id"]
        assert second.resumed is True
        assert second.processed_this_run == 0
        table = pq.read_table(out / "data")
        assert table.num_rows == manifest["counts"]["inputs"] == 43
        assert len(set(table.column("row_id").to_pylist())) == 43
