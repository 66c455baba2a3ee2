"""``python -m pipeline run`` as a subprocess against S3: exit codes, messages, and credentials kept out."""

from __future__ import annotations

import json
import secrets
import string
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from helpers import free_port, run_cli
from storage_s3 import get_bytes, job_environment, list_keys, read_json, upload_images

pytestmark = pytest.mark.slow


def run_job_cli(
    config_path: Path, env: dict[str, str], timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the job to the end; stdout and stderr are captured."""
    return run_cli(
        ["run", "--config", str(config_path)], env=env, timeout_s=timeout_s, cwd=config_path.parent
    )


def unique_credentials() -> tuple[str, str]:
    """A key id and secret used by no other test, so finding them anywhere means a leak."""
    key_id = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    return key_id, secrets.token_urlsafe(30)


class TestCli:
    def test_unreachable_endpoint_exits_4_quickly(self, bucket, s3, s3_config, write_config):
        """With nothing listening at the endpoint the run exits 4 with a clear one-line error, quickly."""
        dead = f"http://127.0.0.1:{free_port()}"
        config = s3_config(
            bucket, storage__endpoint_url=dead, storage__max_attempts=2, storage__connect_timeout_s=1
        )
        started = time.monotonic()
        result = run_job_cli(write_config(config), job_environment())
        assert time.monotonic() - started < 60
        assert result.returncode == 4, result.stderr[-3000:]
        error = json.loads(result.stderr.strip().splitlines()[-1])  # the last line: one JSON error
        assert (error["level"], error["exit_code"]) == ("error", 4)
        assert error["event"].startswith(f"cannot list s3://{bucket}/out (endpoint {dead}, 2 attempts)")
        assert "storage unreachable" in error["event"]
        assert "Traceback" not in result.stderr
        assert list_keys(s3, bucket, "out/") == []

    def test_credentials_appear_in_no_log_or_output(self, bucket, s3, s3_config, write_config):
        """The run's credentials are nowhere in its stdout/stderr or in any file under the output prefix."""
        upload_images(s3, bucket, "in", 10)
        key_id, secret = unique_credentials()
        config = s3_config(bucket, logging__level="debug", logging__format="json")
        env = job_environment(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
        result = run_job_cli(write_config(config), env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert read_json(s3, bucket, "out/_SUCCESS")["counts"]["inputs"] == 12
        keys = list_keys(s3, bucket, "out/")
        assert {"out/_SUCCESS", "out/_run.json", "out/_inputs.parquet", "out/_failures.parquet"} <= set(keys)
        assert any(key.startswith("out/_summary-") for key in keys)
        assert any(key.startswith("out/_checkpoint/") for key in keys)
        for credential in (key_id, secret):
            assert credential not in result.stdout
            assert credential not in result.stderr
            for key in keys:
                assert credential.encode() not in get_bytes(s3, bucket, key), key


class TestMissingBucket:
    def test_a_missing_output_bucket_exits_4_naming_it(
        self, moto, s3, sample_images, make_config, write_config
    ):
        """An output bucket that does not exist: exit 4 (storage), the bucket named, no traceback."""
        missing = f"no-such-bucket-{secrets.token_hex(4)}"
        config = make_config(
            sample_images,
            output__uri=f"s3://{missing}/preds",
            storage__endpoint_url=moto.endpoint,
            storage__region="us-east-1",
        )
        result = run_job_cli(write_config(config), job_environment(), timeout_s=120)
        assert result.returncode == 4, result.stderr[-3000:]
        error = json.loads(result.stderr.strip().splitlines()[-1])
        assert f"bucket '{missing}' does not exist" in error["event"]
        assert f"s3://{missing}/preds" in error["event"]
        assert "Traceback" not in result.stderr
        assert missing not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]


class TestInputsAndWeightsOnS3:
    def test_unreachable_weights_store_exits_4(self, sample_images, make_config, write_config, tmp_path):
        """Weights on an S3 endpoint that does not answer: exit 4 with a one-line error, no traceback."""
        dead = f"http://127.0.0.1:{free_port()}"
        config = make_config(
            sample_images,
            model__weights="s3://models/resnet18.safetensors",
            storage__endpoint_url=dead,
            storage__region="us-east-1",
            storage__max_attempts=1,
            storage__connect_timeout_s=1,
        )
        result = run_job_cli(write_config(config), job_environment())
        assert result.returncode == 4, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert "cannot read the model weights at s3://models/resnet18.safetensors" in result.stderr
        assert not (tmp_path / "out" / "_SUCCESS").exists()

    def test_mixed_schemes_in_one_manifest(self, s3, bucket, moto, make_config, write_config, tmp_path):
        """A local path first, then s3:// URIs: each row is read from its own store."""
        [s3_image] = upload_images(s3, bucket, "in", 1, broken=False)
        local = tmp_path / "local.jpg"
        local.write_bytes(get_bytes(s3, bucket, s3_image.split("/", 3)[3]))
        missing = f"s3://{bucket}/in/missing.jpg"
        (tmp_path / bucket / "in").mkdir(parents=True)
        (tmp_path / bucket / "in" / "missing.jpg").write_bytes(local.read_bytes())  # a local decoy
        manifest = tmp_path / "manifest.csv"
        pyarrow.csv.write_csv(pa.table({"uri": [str(local), s3_image, missing]}), manifest)
        config = make_config(
            manifest, storage__endpoint_url=moto.endpoint, storage__region="us-east-1", logging__format="json"
        )
        result = run_job_cli(write_config(config), job_environment())
        assert result.returncode == 0, result.stderr[-3000:]
        rows = {row["uri"]: row for row in pq.read_table(tmp_path / "out" / "data").to_pylist()}
        assert rows[str(local)]["status"] == "ok"
        assert rows[s3_image]["status"] == "ok"
        assert rows[missing]["reason"] == "not_found"
