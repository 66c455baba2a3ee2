"""A two-model run on the S3 test server, killed with SIGKILL mid-write and resumed: both outputs
committed, every input exactly once in each."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import kill_group, wait_for_parts
from storage_s3 import list_keys, read_json, read_parts, start_joined_run

from pipeline.cli import samples
from pipeline.config import load_config
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow

IMAGES = 24
BUCKET = "multi-model"
SMALL = [
    "preprocess.resize_size=48",
    "preprocess.crop_size=48",
    "preprocess.batch_size=2",
    "inference.batch_size=2",
    "inference.precision=fp32",
    "output.rows_per_file=2",
    "storage.region=us-east-1",
    "resources.stall_timeout_s=120",
    "logging.progress=off",
]
PENDING = ".pending.parquet"


@pytest.fixture(scope="module")
def killed_and_resumed(
    ray_session: None, s3: Any, moto: Any, weights_file: Any, tmp_path_factory
) -> dict[str, Any]:
    """Two models (classify, embed) over 24 images: killed once a part is whole, then resumed in-process."""
    tmp = tmp_path_factory.mktemp("s3-multi")
    s3.create_bucket(Bucket=BUCKET)
    rng = np.random.default_rng(17)
    for index in range(IMAGES):
        body = samples.jpeg_bytes(samples.photo_like(rng, 48, 40))
        s3.put_object(Bucket=BUCKET, Key=f"in/img-{index:02d}.jpg", Body=body)
    models = (
        f"models=[{{name: resnet18, weights: '{weights_file}', output: labels}},"
        f" {{name: resnet18, weights: '{weights_file}', task: embed, output: vectors}}]"
    )
    config = load_config(
        None,
        [
            f"input.uri=s3://{BUCKET}/in",
            f"output.uri=s3://{BUCKET}/out",
            f"storage.endpoint_url={moto.endpoint}",
            *SMALL,
            models,
        ],
        environ={},
    )
    log = tmp / "killed.log"
    killed = start_joined_run(config, tmp / "multi.yaml", log)
    try:
        wait_for_parts(
            lambda: [k for k in list_keys(s3, BUCKET, "out/_multi/_checkpoint/") if not k.endswith(PENDING)],
            bool,
            killed,
            timeout_s=300,
            interval_s=0.1,
            log=log,
        )
    finally:
        kill_group(killed)
    after_kill = list_keys(s3, BUCKET, "out/")
    return {"after_kill": after_kill, "resumed": run_job(config), "s3": s3}


def test_killed_two_model_run_resumes_to_both_outputs_committed(killed_and_resumed):
    """After SIGKILL mid-write nothing is committed; the resume commits both, every input once in each."""
    s3, after = killed_and_resumed["s3"], killed_and_resumed["after_kill"]
    assert not [key for key in after if key.endswith("_SUCCESS")]
    resumed = killed_and_resumed["resumed"]
    assert resumed.status == "succeeded"
    assert resumed.resumed
    assert 0 < resumed.processed_this_run < IMAGES  # the rows the killed run wrote were not redone
    for name in ("labels", "vectors"):
        manifest = read_json(s3, BUCKET, f"out/{name}/_SUCCESS")
        assert manifest["counts"] == {"inputs": IMAGES, "succeeded": IMAGES, "failed": 0}
        rows = read_parts(s3, BUCKET, f"out/{name}").column("row_id").to_pylist()
        assert len(rows) == len(set(rows)) == IMAGES
    assert read_json(s3, BUCKET, "out/_multi/_SUCCESS")["run_id"] == resumed.run_id
