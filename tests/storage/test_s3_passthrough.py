"""Carried manifest columns on S3 (moto_server): a Parquet manifest in the bucket, parts in the bucket."""

from __future__ import annotations

import datetime as dt
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from storage_s3 import get_bytes, read_json, read_parts, upload_images

from pipeline.review.inspection import inspect_output
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow


def test_columns_of_a_manifest_in_s3_reach_every_row(ray_session, s3, bucket, s3_config):
    """Each row, failed ones too, holds its manifest row's values with the manifest's types."""
    uris = upload_images(s3, bucket, "in", 10)
    count = len(uris)
    manifest = pa.table(
        {
            "uri": uris,
            "sku": [f"SKU-{i:04d}" for i in range(count)],
            "units": pa.array([None if i % 4 == 0 else 10 * i for i in range(count)], pa.int64()),
            "seen": pa.array(
                [dt.datetime(2026, 11, 1 + i, tzinfo=dt.UTC) for i in range(count)],
                pa.timestamp("ms", tz="UTC"),
            ),
            "colours": pa.array([["red", "blue"][: i % 3] for i in range(count)], pa.list_(pa.string())),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(manifest, buffer)
    s3.put_object(Bucket=bucket, Key="lists/manifest.parquet", Body=buffer.getvalue())
    manifest = pq.read_table(io.BytesIO(buffer.getvalue()))  # as the job reads it
    carried = ["sku", "units", "seen", "colours"]
    config = s3_config(
        bucket,
        input__uri=f"s3://{bucket}/lists/manifest.parquet",
        input__passthrough_columns="[sku, units, seen, colours]",
    )
    summary = run_job(config)
    assert (summary.succeeded, summary.failed) == (10, 2)
    out = read_parts(s3, bucket, "out")
    assert out.select(carried).schema == manifest.select(carried).schema
    expected = {row["uri"]: {name: row[name] for name in carried} for row in manifest.to_pylist()}
    assert {row["uri"]: {name: row[name] for name in carried} for row in out.to_pylist()} == expected
    failures = pq.read_table(io.BytesIO(get_bytes(s3, bucket, "out/_failures.parquet")))
    assert {row["uri"]: row["sku"] for row in failures.to_pylist()} == {
        uri: expected[uri]["sku"] for uri in failures.column("uri").to_pylist()
    }
    committed = read_json(s3, bucket, "out/_SUCCESS")
    assert [item["name"] for item in committed["passthrough_columns"]] == carried
    assert committed["passthrough_columns"][2]["type"] == "timestamp[ms, tz=UTC]"
    assert inspect_output(config.output.uri, config.storage)["consistent_with_manifest"] is True
