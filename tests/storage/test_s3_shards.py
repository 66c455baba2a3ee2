"""Shards in S3 (moto_server): equal to the same images as loose objects, and SIGKILL + resume.

1,000 small images and the 3 broken files are uploaded as objects, and packed into 3
Parquet shards (keys: the objects' URIs) and 3 WebDataset tars in the same bucket.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import kill_group, wait_for_parts
from storage_s3 import KILLABLE_PACE, list_keys, read_json, read_parts
from test_resume import DEADLINE_S, committed_checkpoints, start_job

from pipeline.cli import sample_shards, samples
from pipeline.config import load_config
from pipeline.inputs import row_ids
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow
RECORDS = 1000
SMALL = {"preprocess.resize_size": 40, "preprocess.crop_size": 32, "inference.batch_size": 32}
COMPARED = ["status", "reason", "label", "top_k_ids"]


def _config(moto: Any, weights: Path, input_uri: str, output_uri: str, **extra: object):
    items = {
        "input.uri": input_uri,
        "output.uri": output_uri,
        "model.name": "resnet18",
        "model.weights": str(weights),
        "inference.precision": "fp32",
        "logging.progress": "off",
        "storage.endpoint_url": moto.endpoint,
        "storage.region": "us-east-1",
        **SMALL,
        **{key.replace("__", "."): value for key, value in extra.items()},
    }
    return load_config(None, [f"{k}={v}" for k, v in items.items()], environ={})


def _upload_tree(s3: Any, bucket: str, prefix: str, paths: list[Path], root: Path) -> None:
    for path in paths:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(root)}", Body=path.read_bytes())


@pytest.fixture(scope="module")
def corpus(s3, moto, weights_file, ray_session, tmp_path_factory) -> dict[str, Any]:
    """The bucket with the files, the shards of each format, and the loose-object run's rows by id."""
    bucket = f"shards-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    local = tmp_path_factory.mktemp("s3-shards")
    files = sorted(samples.make_images(local / "files", RECORDS, seed=4, sizes=((64, 48), (48, 64))))
    _upload_tree(s3, bucket, "in/files", files, local / "files")
    uri_of = {path: f"s3://{bucket}/in/files/{path.relative_to(local / 'files')}" for path in files}
    parquet = sample_shards.parquet_shards(files, local / "parquet", 3, key_of=uri_of.__getitem__)
    tars = sample_shards.webdataset_shards(files, local / "tars", 3)
    _upload_tree(s3, bucket, "in/parquet", parquet, local / "parquet")
    _upload_tree(s3, bucket, "in/tars", tars, local / "tars")
    run_job(_config(moto, weights_file, f"s3://{bucket}/in/files", f"s3://{bucket}/out-files"))
    loose = {row["row_id"]: row for row in read_parts(s3, bucket, "out-files").to_pylist()}
    assert len(loose) == len(files)
    return {"bucket": bucket, "files": files, "uri_of": uri_of, "tars": tars, "loose": loose}


def _assert_same(rows: dict[str, dict], reference: dict[str, dict]) -> None:
    assert set(rows) == set(reference)
    for row_id, row in rows.items():
        assert {key: row[key] for key in COMPARED} == {key: reference[row_id][key] for key in COMPARED}
        if row["score"] is not None:
            assert row["score"] == pytest.approx(reference[row_id]["score"], abs=1e-4)


def test_parquet_shards_in_s3_equal_the_objects_run(s3, moto, weights_file, corpus):
    """Keys equal to the objects' URIs: the same row ids and predictions, every record once."""
    bucket = corpus["bucket"]
    config = _config(
        moto, weights_file, f"s3://{bucket}/in/parquet", f"s3://{bucket}/out-parquet", input__key_column="key"
    )
    summary = run_job(config)
    assert (summary.inputs, summary.succeeded, summary.failed) == (RECORDS + 3, RECORDS, 3)
    table = read_parts(s3, bucket, "out-parquet")
    assert table.num_rows == len(set(table.column("row_id").to_pylist())) == RECORDS + 3
    _assert_same({row["row_id"]: row for row in table.to_pylist()}, corpus["loose"])
    committed = read_json(s3, bucket, "out-parquet/_SUCCESS")
    assert (committed["input_format"], committed["failed_shards"]) == ("parquet", [])
    assert list_keys(s3, bucket, "out-parquet/_shards/") == [
        f"out-parquet/_shards/{index:06d}.json" for index in range(3)
    ]


def test_webdataset_shards_in_s3_equal_the_objects_run(s3, moto, weights_file, corpus):
    """Tars in S3: one row per record, the objects' predictions."""
    bucket = corpus["bucket"]
    summary = run_job(_config(moto, weights_file, f"s3://{bucket}/in/tars", f"s3://{bucket}/out-tars"))
    assert (summary.inputs, summary.succeeded, summary.failed) == (RECORDS + 3, RECORDS, 3)
    files, tars = corpus["files"], corpus["tars"]
    size = -(-len(files) // len(tars))
    object_id = {}  # each record's uri -> the row id of the object it was packed from
    for number, path in enumerate(files):
        locator = f"{tars[number // size].name}#{sample_shards.webdataset_key(path)}"
        object_id[f"s3://{bucket}/in/tars/{locator}"] = row_ids.row_id(corpus["uri_of"][path])
    table = read_parts(s3, bucket, "out-tars")
    assert table.num_rows == len(set(table.column("row_id").to_pylist())) == RECORDS + 3
    _assert_same({object_id[row["uri"]]: row for row in table.to_pylist()}, corpus["loose"])


@pytest.mark.parametrize("kind", ["parquet", "webdataset"])
def test_killed_shard_run_resumes_without_loss_or_duplicates(
    kind, s3, bucket, s3_config, write_config, tmp_path
):
    """SIGKILL after the first part: the second run reads fewer records, and every record is there once."""
    files = sorted(samples.make_images(tmp_path / "files", 240, seed=8, sizes=((160, 120),), broken=False))
    make = sample_shards.parquet_shards if kind == "parquet" else sample_shards.webdataset_shards
    shards = make(files, tmp_path / "shards", 4)
    _upload_tree(s3, bucket, "in", shards, tmp_path / "shards")
    config = s3_config(
        bucket,
        input__format=kind,
        **KILLABLE_PACE,
    )
    config_path = write_config(config)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start_job(config_path, first_log)
    try:
        _wait_for_a_part(s3, bucket, first, first_log)
    finally:
        kill_group(first)
    assert "out/_SUCCESS" not in list_keys(s3, bucket, "out/")
    second = start_job(config_path, second_log)
    assert second.wait(timeout=DEADLINE_S) == 0, second_log.read_text()[-3000:]
    manifest = read_json(s3, bucket, "out/_SUCCESS")
    assert manifest["resumed"] is True
    assert 0 < manifest["processed_this_run"] < len(files)
    assert manifest["counts"] == {"inputs": len(files), "succeeded": len(files), "failed": 0}
    table = read_parts(s3, bucket, "out")
    ids = table.column("row_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(files)


def _wait_for_a_part(s3: Any, bucket: str, process: Any, log: Path) -> None:
    """Poll until one part is committed; fail if the job ends first."""
    wait_for_parts(
        lambda: committed_checkpoints(s3, bucket),
        bool,
        process,
        timeout_s=DEADLINE_S,
        interval_s=0.1,
        log=log,
    )
