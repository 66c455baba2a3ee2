"""``pipeline report`` of an output in a real S3 API (moto server), its pictures read from S3 too."""

from __future__ import annotations

import pytest
from storage_s3 import storage_flags, upload_folder, upload_images

from pipeline.cli import main

pytestmark = pytest.mark.slow


def test_report_of_an_s3_output_with_s3_inputs(s3, bucket, moto, tmp_path, write_output):
    images = upload_images(s3, bucket, "images", 3, broken=False)
    rows = [
        {"row_id": f"r{i}", "uri": uri, "status": "ok", "top_k_labels": [f"label{i}", "x", "y"]}
        for i, uri in enumerate(images)
    ]
    rows.append(
        {"row_id": "gone", "uri": f"s3://{bucket}/images/gone.jpg", "status": "ok", "top_k_labels": ["z"]}
    )
    uri = upload_folder(s3, bucket, write_output(tmp_path / "out", rows), "preds/run-1")
    page = tmp_path / "report.html"
    assert main(["report", uri, "--html", str(page), *storage_flags(moto.endpoint)]) == 0
    html = page.read_text(encoding="utf-8")
    assert uri in html
    assert html.count('src="data:image/jpeg;base64,') == len(images)  # read through s3fs from moto
    assert "not found: deleted or moved since the run" in html  # the one object that is not there
    assert f"s3://{bucket}/images/gone.jpg" in html


def test_uncommitted_s3_output_is_refused(s3, bucket, moto, tmp_path, write_output):
    rows = [{"row_id": "r0", "status": "ok", "top_k_labels": ["cat"]}]
    uri = upload_folder(s3, bucket, write_output(tmp_path / "out", rows, commit=False), "preds/run-2")
    page = tmp_path / "report.html"
    assert main(["report", uri, "--html", str(page), *storage_flags(moto.endpoint)]) == 8
    assert not page.exists()
