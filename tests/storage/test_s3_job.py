"""The job from s3:// to s3:// against a real S3 API (moto_server), on the shared in-process Ray cluster."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest
import ray
import structlog
import torch
from prometheus_client import CollectorRegistry
from storage_fault_proxy import FaultProxy
from storage_s3 import get_bytes, list_keys, read_json, read_parts, upload_images

from pipeline import cli
from pipeline.errors import PipelineError
from pipeline.inputs import row_ids
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put structlog back as it was: the CLI configures it for the (captured) stderr of its test."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def assert_exactly_once(s3, bucket: str, uris: list[str]) -> None:
    """The parts hold one row per input, and nothing else."""
    table = read_parts(s3, bucket, "out")
    ids = table.column("row_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(uris)
    assert sorted(table.column("uri").to_pylist()) == uris
    assert set(ids) == {row_ids.row_id(uri) for uri in uris}


class TestS3Job:
    def test_outputs_equal_inputs_with_manifest(self, ray_session, s3, bucket, s3_config, weights_file):
        """Every input appears once; the manifest has counts, config hash, model sha256, versions, files."""
        uris = upload_images(s3, bucket, "in", 40)
        config = s3_config(bucket)
        summary = run_job(config)
        assert_exactly_once(s3, bucket, uris)
        manifest = read_json(s3, bucket, "out/_SUCCESS")
        assert manifest["status"] == "committed"
        assert manifest["run_id"] == summary.run_id
        assert manifest["counts"] == {"inputs": 42, "succeeded": 40, "failed": 2}
        assert manifest["failed_by_reason"] == {"empty_file": 1, "not_an_image": 1}
        assert manifest["processed_this_run"] == 42
        assert manifest["resumed"] is False
        assert manifest["model"]["sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
        assert manifest["config_hash"] == config.config_hash(manifest["model"]["sha256"])  # the bytes too
        assert manifest["versions"]["ray"] == ray.__version__
        assert manifest["versions"]["torch"] == torch.__version__
        assert {"pipeline", "python", "pyarrow", "torchvision"} <= set(manifest["versions"])
        assert manifest["started_at"] <= manifest["finished_at"] <= manifest["committed_at"]
        assert manifest["images_per_second"] > 0
        parts = list_keys(s3, bucket, "out/data/")
        assert sorted(f"out/{item['path']}" for item in manifest["layout"]["files"]) == parts
        assert all(key.rsplit("/", 1)[1].startswith(f"part-{summary.run_id}-") for key in parts)
        sizes = [item["rows"] for item in sorted(manifest["layout"]["files"], key=lambda item: item["rows"])]
        # Only the last file of an attempt may hold fewer rows than output.rows_per_file.
        assert all(size >= config.output.rows_per_file for size in sizes[1:])
        failures = pq.read_table(io.BytesIO(get_bytes(s3, bucket, "out/_failures.parquet")))
        assert sorted(failures.column("reason").to_pylist()) == ["empty_file", "not_an_image"]
        assert read_json(s3, bucket, f"out/_summary-{summary.run_id}.json")["status"] == "succeeded"

    def test_uncommitted_run_just_commits_and_a_committed_one_is_refused_then_overwritten(
        self, ray_session, s3, bucket, s3_config, write_config, capfd, restore_logging
    ):
        """A run stopped after its last part but before the manifest commits on re-run, reprocessing none.

        Then, on that committed output (one run serves both checks): re-running it exits 0 writing no
        key, --strict exits 3 saying so; --overwrite redoes it under a new run id.
        """
        uris = upload_images(s3, bucket, "in", 8, broken=False)
        config = s3_config(bucket)
        first = run_job(config)
        s3.delete_object(Bucket=bucket, Key="out/_SUCCESS")
        second = run_job(config)
        assert (second.run_id, second.resumed, second.processed_this_run) == (first.run_id, True, 0)
        manifest = read_json(s3, bucket, "out/_SUCCESS")
        assert manifest["counts"] == {"inputs": 8, "succeeded": 8, "failed": 0}
        assert_exactly_once(s3, bucket, uris)

        path = write_config(config)
        keys = list_keys(s3, bucket, "out/")
        capfd.readouterr()
        assert cli.main(["run", "--config", str(path)]) == 0
        assert f"run {first.run_id}: already_committed" in capfd.readouterr().out
        assert list_keys(s3, bucket, "out/") == keys
        assert cli.main(["run", "--config", str(path), "--strict"]) == 3
        # The command's last stderr line (JSON off a terminal; the CLI writes it to fd 2).
        assert f"holds run '{first.run_id}', committed" in capfd.readouterr().err.strip().splitlines()[-1]
        assert list_keys(s3, bucket, "out/") == keys
        assert read_json(s3, bucket, "out/_SUCCESS")["run_id"] == first.run_id
        assert cli.main(["run", "--config", str(path), "--overwrite"]) == 0
        manifest = read_json(s3, bucket, "out/_SUCCESS")
        assert manifest["run_id"] != first.run_id
        assert manifest["processed_this_run"] == len(uris)
        assert_exactly_once(s3, bucket, uris)
        assert not [key for key in list_keys(s3, bucket, "out/") if first.run_id in key]


class TestStorageFaults:
    def test_commits_through_503_slowdown(self, ray_session, s3, bucket, s3_config, moto):
        """Every 5th request answered 503: retried, counted (summary, manifest, metric); commits, no loss."""
        uris = upload_images(s3, bucket, "in", 40)
        proxy = FaultProxy(moto.endpoint, every=5).start()
        registry = CollectorRegistry()
        try:
            config = s3_config(bucket, storage__endpoint_url=proxy.url, storage__max_attempts=6)
            summary = run_job(config, registry=registry)
        finally:
            proxy.stop()
        assert proxy.faults >= 20, (proxy.requests, proxy.faults)
        assert summary.status == "succeeded"
        manifest = read_json(s3, bucket, "out/_SUCCESS")
        assert manifest["counts"] == {"inputs": 42, "succeeded": 40, "failed": 2}
        assert_exactly_once(s3, bucket, uris)
        # Each 503 is retried once, by the driver or a task; the last few requests (the summary, the
        # lease's release) come after the count, and the manifest was written before the commit's.
        assert proxy.faults - 5 <= summary.storage_retries <= proxy.faults
        assert 0 < manifest["storage_retries"] <= summary.storage_retries
        metric = registry.get_sample_value("pipeline_job_storage_retries", {"run_id": summary.run_id})
        assert metric == summary.storage_retries

    def test_endpoint_lost_mid_run_fails_without_commit(self, ray_session, s3, bucket, s3_config, moto):
        """When the endpoint goes away after the first part, the run fails in bounded time, uncommitted."""
        upload_images(s3, bucket, "in", 80, broken=False)
        proxy = FaultProxy(moto.endpoint, every=0).start()
        config = s3_config(
            bucket, storage__endpoint_url=proxy.url, storage__max_attempts=2, storage__connect_timeout_s=1
        )
        stopped_at: list[float] = []

        def stop_after_first_part() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not list_keys(s3, bucket, "out/data/"):
                time.sleep(0.05)
            proxy.stop()
            stopped_at.append(time.monotonic())

        watcher = threading.Thread(target=stop_after_first_part, daemon=True)
        watcher.start()
        with pytest.raises(PipelineError) as caught:
            run_job(config)
        failed_at = time.monotonic()
        watcher.join(timeout=10)
        assert stopped_at, "the endpoint was never taken away"
        assert failed_at - stopped_at[0] < 60
        assert caught.value.exit_code in (4, 6)
        assert "EndpointConnectionError" in str(caught.value)
        assert "_SUCCESS" not in {key.rsplit("/", 1)[1] for key in list_keys(s3, bucket, "out/")}
