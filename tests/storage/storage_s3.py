"""Helpers of the storage tests: a moto S3 server, tiny generated images, reading outputs back."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from helpers import free_port

from pipeline.cli import samples

REGION = "us-east-1"
IMAGE_SIZES = ((64, 64), (96, 72), (160, 120), (120, 160))
BROKEN = {"broken/empty.jpg": b"", "broken/not-an-image.jpg": b"plain text with a .jpg name\n"}
FAKE_ACCESS_KEY_ID = "AKIAPIPELINETEST0001"
FAKE_SECRET_ACCESS_KEY = "pipelineTestSecret/0123456789abcdefGHIJKLmn"  # noqa: S105  # a fake, for moto
# Config overrides for a run that is killed mid-way: small parts and slow inference leave
# seconds between parts, so the kill lands after some parts and before the commit.
KILLABLE_PACE = {
    "output__rows_per_file": 8,
    "preprocess__batch_size": 4,
    "preprocess__resize_size": 160,
    "preprocess__crop_size": 160,
    "inference__batch_size": 4,
    "inference__torch_threads": 1,
    "resources__object_store_memory_bytes": 150 * 1024 * 1024,
}


def moto_server_path() -> str | None:
    """The ``moto_server`` script next to this interpreter, or on the PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


@dataclass
class MotoServer:
    """A ``moto_server`` subprocess on 127.0.0.1."""

    executable: str
    log_path: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The server's endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> MotoServer:
        """Start it on a free port and wait until it answers."""
        self.port = free_port()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [self.executable, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                msg = (
                    f"moto_server exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}"
                )
                raise RuntimeError(msg)
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):  # noqa: S310
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        msg = f"moto_server did not answer on {self.endpoint} within {timeout_s:.0f}s"
        raise RuntimeError(msg)

    def stop(self) -> None:
        """Terminate it (kill if it does not stop)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for the test server, with the fake credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
    )


def upload_images(
    client: Any, bucket: str, prefix: str, count: int, *, seed: int = 0, broken: bool = True
) -> list[str]:
    """Upload ``count`` tiny JPEGs (and the broken files) under ``prefix``; return their s3:// URIs."""
    rng = np.random.default_rng(seed)
    uris = []
    for index in range(count):
        width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        key = f"{prefix}/shard-{index % 3}/img-{index:05d}.jpg"
        client.put_object(
            Bucket=bucket, Key=key, Body=samples.jpeg_bytes(samples.photo_like(rng, width, height))
        )
        uris.append(f"s3://{bucket}/{key}")
    if broken:
        for name, data in BROKEN.items():
            key = f"{prefix}/{name}"
            client.put_object(Bucket=bucket, Key=key, Body=data)
            uris.append(f"s3://{bucket}/{key}")
    return sorted(uris)


def upload_folder(client: Any, bucket: str, root: Path, prefix: str) -> str:
    """Upload every file under ``root`` (e.g. a hand-made output) to ``prefix``; return its s3:// URI."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(root)}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def storage_flags(endpoint: str) -> list[str]:
    """The ``--set`` flags that point a reading command (inspect, compare, report) at the moto server."""
    return ["--set", f"storage.endpoint_url={endpoint}", "--set", f"storage.region={REGION}"]


def list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix``."""
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return sorted(keys)


def get_bytes(client: Any, bucket: str, key: str) -> bytes:
    """One object's bytes."""
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def read_json(client: Any, bucket: str, key: str) -> dict[str, Any]:
    """One JSON object."""
    data = json.loads(get_bytes(client, bucket, key))
    assert isinstance(data, dict)
    return data


def read_parts(client: Any, bucket: str, prefix: str) -> pa.Table:
    """All part files under ``<prefix>/data/`` as one table."""
    keys = [key for key in list_keys(client, bucket, f"{prefix}/data/") if key.endswith(".parquet")]
    return pa.concat_tables([pq.read_table(io.BytesIO(get_bytes(client, bucket, key))) for key in keys])


def job_environment(**extra: str) -> dict[str, str]:
    """Environment for a ``python -m pipeline`` subprocess: fake credentials, no real AWS config."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PIPELINE_", "RAY_ADDRESS"))
    }
    env.update(
        {
            "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start_joined_run(config: Any, path: Path, log: Path) -> subprocess.Popen[bytes]:
    """``pipeline run`` of ``config`` (written to ``path``) as a process of its own, to be killed.

    The driver joins the session's Ray cluster (a RayJob's driver on a running cluster): it
    starts in seconds, and a SIGKILL takes the driver, whose tasks and actors Ray then ends.
    Its output goes to ``log``; it runs in its own session, so the kill reaches only it.
    """
    import ray

    from pipeline.config import dump_yaml

    joined = config.model_copy(deep=True)
    joined.resources.ray_address = ray.get_runtime_context().gcs_address
    path.write_text(dump_yaml(joined), encoding="utf-8")
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--config", str(path)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=job_environment(),
            cwd=path.parent,
        )
