"""Crash and resume: ``python -m pipeline run`` killed with SIGKILL mid-run, then run again.

The job runs as a subprocess in its own session, with its own Ray cluster, so the
kill takes the driver and every Ray process it started, as a lost pod would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import kill_group, wait_for_parts
from storage_s3 import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    KILLABLE_PACE,
    get_bytes,
    job_environment,
    list_keys,
    read_json,
    read_parts,
    upload_images,
)

from pipeline.inputs import row_ids

pytestmark = pytest.mark.slow

IMAGES = 240
KILL_AFTER_COMMITTED_PARTS = 2  # of about four: Ray reads a small listing in 2 x CPUs blocks
DEADLINE_S = 300.0
PENDING = ".pending.parquet"


def start_job(config_path: Path, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m pipeline run`` in a new session (its own process group), output to a file."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--config", str(config_path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=job_environment(),
            cwd=config_path.parent,
        )


def committed_checkpoints(s3: Any, bucket: str) -> list[str]:
    """Checkpoint files whose two-phase commit finished (under ``_checkpoint/attempt-<n>/``)."""
    keys = list_keys(s3, bucket, "out/_checkpoint/")
    return [key for key in keys if key.endswith(".parquet") and not key.endswith(PENDING)]


def wait_for_committed_parts(
    s3: Any, bucket: str, process: subprocess.Popen[bytes], log_path: Path
) -> list[str]:
    """Poll until some parts are committed (not a fixed sleep); fail if the job ends first."""
    return wait_for_parts(
        lambda: committed_checkpoints(s3, bucket),
        lambda done: len(done) >= KILL_AFTER_COMMITTED_PARTS,
        process,
        timeout_s=DEADLINE_S,
        interval_s=0.1,
        log=log_path,
    )


def copy_object(s3: Any, bucket: str, source: str, target: str) -> None:
    """Server-side copy of one object."""
    s3.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source})


def fake_crash_leftovers(s3: Any, bucket: str, committed: list[str], run_id: str) -> tuple[str, str]:
    """Leave what two other crash windows leave; return (orphan part key, part whose rename was cut).

    1. A task wrote its pending checkpoint and its part, then died before committing: the
       part's rows are also written elsewhere, so it must be deleted on restore (Ray does).
    2. A commit (copy, then delete, on S3) was cut between the two: both the pending and the
       committed checkpoint exist, and the part is good, so it must survive (we reconcile).
    """
    first, second = committed[0], committed[1]
    folder, name = first.rsplit("/", 1)
    base = name.removesuffix(".parquet")
    part = next(
        key for key in list_keys(s3, bucket, "out/data/") if key.rsplit("/", 1)[1].startswith(f"{base}-")
    )
    orphan_base = f"part-{run_id}-{'f' * 32}-999999"
    orphan = f"out/data/{orphan_base}-0.parquet"
    copy_object(s3, bucket, part, orphan)
    copy_object(s3, bucket, first, f"{folder}/{orphan_base}{PENDING}")
    cut_base = second.rsplit("/", 1)[1].removesuffix(".parquet")
    copy_object(s3, bucket, second, f"{second.rsplit('/', 1)[0]}/{cut_base}{PENDING}")
    return orphan, cut_base


class TestCrashAndResume:
    def test_killed_run_resumes_without_duplicates(self, s3, bucket, s3_config, write_config, tmp_path):
        """After SIGKILL, a resume is refused while an object is added; then it does the rest, rows once."""
        uris = upload_images(s3, bucket, "in", IMAGES, seed=7)
        config = s3_config(
            bucket,
            **KILLABLE_PACE,
        )
        config_path = write_config(config)
        first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

        first = start_job(config_path, first_log)
        try:
            committed = wait_for_committed_parts(s3, bucket, first, first_log)
        finally:
            kill_group(first)
        keys = list_keys(s3, bucket, "out/")
        assert "out/_SUCCESS" not in keys
        run_id = read_json(s3, bucket, "out/_run.json")["run_id"]
        orphan, cut_base = fake_crash_leftovers(s3, bucket, committed, run_id)
        late = upload_images(s3, bucket, "in/late", 1, seed=99, broken=False)  # not in _inputs.parquet
        refused = start_job(config_path, tmp_path / "refused.log")
        assert refused.wait(timeout=DEADLINE_S) == 2, (tmp_path / "refused.log").read_text()[-3000:]
        assert f"1 added ({late[0]})" in (tmp_path / "refused.log").read_text()  # the prefix changed
        s3.delete_object(Bucket=bucket, Key=late[0].split("/", 3)[3])

        second = start_job(config_path, second_log)
        assert second.wait(timeout=DEADLINE_S) == 0, second_log.read_text()[-3000:]

        manifest = read_json(s3, bucket, "out/_SUCCESS")
        assert manifest["run_id"] == run_id
        assert manifest["resumed"] is True
        assert 0 < manifest["processed_this_run"] < len(uris)
        assert manifest["counts"] == {"inputs": len(uris), "succeeded": IMAGES, "failed": 2}
        table = read_parts(s3, bucket, "out")
        ids = table.column("row_id").to_pylist()
        assert len(ids) == len(set(ids)) == len(uris)
        assert sorted(table.column("uri").to_pylist()) == uris
        assert set(ids) == {row_ids.row_id(uri) for uri in uris}
        data_keys = list_keys(s3, bucket, "out/data/")
        assert orphan not in data_keys
        assert any(key.rsplit("/", 1)[1].startswith(cut_base) for key in data_keys)
        assert sorted(f"out/{item['path']}" for item in manifest["layout"]["files"]) == data_keys
        assert sum(item["rows"] for item in manifest["layout"]["files"]) == len(uris)
        assert not [key for key in list_keys(s3, bucket, "out/_checkpoint/") if key.endswith(PENDING)]
        failures = pq.read_table(pa.BufferReader(get_bytes(s3, bucket, "out/_failures.parquet")))
        assert sorted(failures.column("reason").to_pylist()) == ["empty_file", "not_an_image"]
        for log in (first_log, second_log):
            text = log.read_text(errors="replace")
            assert FAKE_ACCESS_KEY_ID not in text
            assert FAKE_SECRET_ACCESS_KEY not in text
