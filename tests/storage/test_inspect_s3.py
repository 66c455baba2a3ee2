"""``pipeline inspect`` and ``compare`` on outputs in a real S3 API (moto server)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import free_port
from storage_s3 import REGION, job_environment, storage_flags, upload_folder

from pipeline.cli import main

pytestmark = pytest.mark.slow


def _row(row_id, label=None, status="ok"):
    labels = [label, "x1", "x2", "x3", "x4"] if label else None
    return {"row_id": row_id, "status": status, "top_k_labels": labels}


ROWS = [_row(f"r{i}", "cat" if i % 3 else "dog") for i in range(12)] + [_row("bad", status="failed")]


def test_inspect_and_compare_an_s3_output(s3, bucket, moto, tmp_path, write_output, capsys):
    uri = upload_folder(s3, bucket, write_output(tmp_path / "out", ROWS), "preds/run-1")
    assert main(["inspect", uri, "--json", *storage_flags(moto.endpoint)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["uri"] == uri
    assert doc["counts"] == {"rows": 13, "ok": 12, "failed": 1}
    assert doc["labels"]["top"] == [{"label": "cat", "rows": 8}, {"label": "dog", "rows": 4}]
    assert doc["consistent_with_manifest"] is True

    assert main(["compare", uri, uri, "--min-agreement", "1", *storage_flags(moto.endpoint)]) == 0
    assert "100.0%" in capsys.readouterr().out


def test_uncommitted_s3_output_is_refused(s3, bucket, moto, tmp_path, write_output, capsys):
    uri = upload_folder(s3, bucket, write_output(tmp_path / "out", ROWS, commit=False), "preds/run-2")
    assert main(["inspect", uri, *storage_flags(moto.endpoint)]) == 8
    assert "not committed" in capsys.readouterr().err


def test_storage_settings_from_the_environment_in_a_fresh_process(s3, bucket, moto, tmp_path, write_output):
    uri = upload_folder(s3, bucket, write_output(tmp_path / "out", ROWS), "preds/run-3")
    env = job_environment(PIPELINE_STORAGE__ENDPOINT_URL=moto.endpoint, PIPELINE_STORAGE__REGION=REGION)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "inspect", uri],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cat" in result.stdout


def test_unreachable_endpoint_is_a_storage_error(bucket, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    flags = ["--set", f"storage.endpoint_url={dead}", "--set", "storage.max_attempts=2"]
    flags += ["--set", "storage.connect_timeout_s=1"]
    assert main(["inspect", f"s3://{bucket}/preds", *flags]) == 4
    assert "storage unreachable" in capsys.readouterr().err
