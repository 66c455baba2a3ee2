"""Fixtures of the storage tests: a real S3 API (moto_server), buckets, tiny images, S3 configs.

The fake AWS credentials go into the environment when this file is imported, at
collection, so before any test starts the shared in-process Ray cluster: Ray workers
inherit the environment the cluster was started with, and botocore in the workers
finds the credentials there, as it would on a pod (environment, profile or IRSA).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_s3 import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    REGION,
    MotoServer,
    moto_server_path,
    s3_client,
)

from pipeline.config import Config, dump_yaml

for _name in (
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
):
    os.environ.pop(_name, None)
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)

# Small everything: parts appear after a few rows, decode and inference batches are tiny.
S3_JOB_SETTINGS: dict[str, Any] = {
    "storage.region": REGION,
    "storage.max_attempts": 5,
    "storage.connect_timeout_s": 5,
    "storage.read_timeout_s": 30,
    "preprocess.resize_size": 64,
    "preprocess.crop_size": 64,
    "preprocess.batch_size": 8,
    "preprocess.fetch_threads": 4,
    "inference.batch_size": 8,
    "output.rows_per_file": 16,
    "resources.stall_timeout_s": 120,
}


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A ``moto_server`` subprocess on a free port for the whole session; always terminated."""
    executable = moto_server_path()
    if executable is None:
        pytest.skip("moto_server not found: pip install 'moto[server]==5.2.5' (a dev dependency)")
    server = MotoServer(executable, tmp_path_factory.mktemp("moto") / "moto_server.log")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3(moto: MotoServer) -> Any:
    """A boto3 client for the moto server."""
    return s3_client(moto.endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, empty bucket for one test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_config(make_config: Callable[..., Config], moto: MotoServer) -> Callable[..., Config]:
    """A validated config from ``s3://<bucket>/in`` to ``s3://<bucket>/out`` on the moto server."""

    def build(bucket: str, **overrides: Any) -> Config:
        settings = {key.replace(".", "__"): value for key, value in S3_JOB_SETTINGS.items()}
        settings.update(
            input__uri=f"s3://{bucket}/in",
            output__uri=f"s3://{bucket}/out",
            storage__endpoint_url=moto.endpoint,
        )
        settings.update(overrides)
        return make_config(settings.pop("input__uri"), **settings)

    return build


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[Config], Path]:
    """Write a config as YAML for ``python -m pipeline run --config``."""

    def write(config: Config, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.write_text(dump_yaml(config), encoding="utf-8")
        return path

    return write
