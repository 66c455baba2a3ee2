"""An incremental run on the S3 test server: killed after carrying, resumed, equal to a full recompute.

One module-scoped scenario: a dozen tiny images run in full (night 1), then changed (two added,
one deleted, one rewritten in place, one renamed, a broken one fixed, one left broken); night 2
builds on night 1 as a ``python -m pipeline run`` process killed with SIGKILL once it has carried
rows forward, then resumed; a full recompute of the same inputs is the oracle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from helpers import kill_group, wait_for_parts
from prometheus_client import CollectorRegistry
from storage_s3 import get_bytes, list_keys, read_json, read_parts, start_joined_run

from pipeline.cli import samples
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow

SMALL = {
    "preprocess.resize_size": 48,
    "preprocess.crop_size": 48,
    "preprocess.batch_size": 4,
    "inference.batch_size": 4,
    "output.rows_per_file": 4,
    "storage.region": "us-east-1",
    "resources.stall_timeout_s": 120,
}
COMPARED = ["row_id", "uri", "status", "reason", "top_k_ids", "top_k_labels", "label", "model_sha256"]
DEADLINE_S = 300.0


def _jpeg(seed: int) -> bytes:
    """A 48-px photo-like JPEG."""
    return samples.jpeg_bytes(samples.photo_like(np.random.default_rng(seed), 48, 48))


@pytest.fixture(scope="module")
def scenario(
    ray_session: None, s3: Any, moto: Any, local_config: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Night 1 in full; the changes; night 2 killed after carrying, then resumed; a full recompute."""
    tmp = tmp_path_factory.mktemp("s3-incremental")
    bucket = "incremental"
    s3.create_bucket(Bucket=bucket)
    for index in range(10):
        s3.put_object(Bucket=bucket, Key=f"in/img-{index:02d}.jpg", Body=_jpeg(index))
    s3.put_object(Bucket=bucket, Key="in/broken-fixed.jpg", Body=b"not an image yet")
    s3.put_object(Bucket=bucket, Key="in/broken-kept.jpg", Body=b"not an image, and stays so")

    def config(out: str, **extra: object) -> Any:
        settings = {**SMALL, "storage.endpoint_url": moto.endpoint, **extra}
        return local_config(
            f"s3://{bucket}/in",
            f"s3://{bucket}/{out}",
            **{k.replace(".", "__"): v for k, v in settings.items()},
        )

    first = run_job(config("night-1"))
    s3.put_object(Bucket=bucket, Key="in/new-a.jpg", Body=_jpeg(100))  # added
    s3.put_object(Bucket=bucket, Key="in/new-b.jpg", Body=_jpeg(101))
    s3.delete_object(Bucket=bucket, Key="in/img-00.jpg")  # deleted
    s3.put_object(Bucket=bucket, Key="in/img-01.jpg", Body=_jpeg(201))  # rewritten in place: a new ETag
    s3.copy_object(
        Bucket=bucket, Key="in/img-02-renamed.jpg", CopySource={"Bucket": bucket, "Key": "in/img-02.jpg"}
    )
    s3.delete_object(Bucket=bucket, Key="in/img-02.jpg")  # renamed
    s3.put_object(Bucket=bucket, Key="in/broken-fixed.jpg", Body=_jpeg(300))  # a failed image fixed

    incremental = config("night-2", **{"output.previous": f"s3://{bucket}/night-1"})
    log = tmp / "killed.log"
    killed = start_joined_run(incremental, tmp / "night-2.yaml", log)
    try:
        carried_checkpoints = wait_for_parts(
            lambda: list_keys(s3, bucket, "night-2/_checkpoint/carried/"),
            bool,
            killed,
            timeout_s=DEADLINE_S,
            interval_s=0.1,
            log=log,
        )
    finally:
        kill_group(killed)
    after_kill = list_keys(s3, bucket, "night-2/")
    # What a kill in the middle of carrying leaves: a carried part whose checkpoint was never written.
    carried_part = next(key for key in after_kill if key.startswith("night-2/data/part-carried-"))
    orphan = f"night-2/data/part-carried-{'f' * 24}-0.parquet"
    s3.copy_object(Bucket=bucket, Key=orphan, CopySource={"Bucket": bucket, "Key": carried_part})
    registry = CollectorRegistry()
    resumed = run_job(incremental, registry=registry)
    full = run_job(config("night-2-full"))
    return {
        "s3": s3,
        "bucket": bucket,
        "first": first,
        "after_kill": after_kill,
        "carried_checkpoints": carried_checkpoints,
        "orphan": orphan,
        "resumed": resumed,
        "registry": registry,
        "storage": incremental.storage,
        "full": full,
    }


def _rows(scenario: dict[str, Any], prefix: str) -> pa.Table:
    """Every part of an output on the test server, sorted by row id."""
    return read_parts(scenario["s3"], scenario["bucket"], prefix).sort_by("row_id")


class TestIncrementalOnS3:
    def test_killed_then_resumed_commits_every_input_once(self, scenario: dict[str, Any]) -> None:
        """Killed after carrying, the resume commits every current input once and carries nothing twice."""
        assert "night-2/_SUCCESS" not in scenario["after_kill"]
        resumed = scenario["resumed"]
        assert resumed.status == "succeeded"
        assert resumed.resumed is True
        rows = _rows(scenario, "night-2")
        ids = rows.column("row_id").to_pylist()
        assert len(ids) == len(set(ids)) == 13
        keys = list_keys(scenario["s3"], scenario["bucket"], "night-2/data/")
        assert scenario["orphan"] not in keys  # the part no checkpoint vouched for was deleted
        manifest = read_json(scenario["s3"], scenario["bucket"], "night-2/_SUCCESS")
        assert sorted(f"night-2/{item['path']}" for item in manifest["layout"]["files"]) == keys
        # The resume carried only the parts the killed attempt had not vouched for: none twice.
        before = [key for key in scenario["after_kill"] if key.startswith("night-2/_checkpoint/carried/")]
        after = list_keys(scenario["s3"], scenario["bucket"], "night-2/_checkpoint/carried/")
        assert before
        assert set(before) <= set(after)
        assert (
            len(after)
            == len(before) + resumed.incremental["parts_copied"] + resumed.incremental["parts_filtered"]
        )

    def test_equals_full_recompute_row_for_row(self, scenario: dict[str, Any]) -> None:
        """Over added, deleted, rewritten, renamed and fixed inputs it equals a full recompute (fp32)."""
        inc, full = _rows(scenario, "night-2"), _rows(scenario, "night-2-full")
        assert inc.num_rows == full.num_rows == 13
        assert inc.select(COMPARED).to_pylist() == full.select(COMPARED).to_pylist()
        np.testing.assert_allclose(
            np.array(inc.column("score").to_pylist(), dtype=float),
            np.array(full.column("score").to_pylist(), dtype=float),
            rtol=0,
            atol=1e-5,
        )

    def test_counts_in_manifest_summary_and_failures(self, scenario: dict[str, Any]) -> None:
        """Carried, computed, retried and dropped are in _SUCCESS and the summary, with the previous URI."""
        s3, bucket, resumed = scenario["s3"], scenario["bucket"], scenario["resumed"]
        manifest = read_json(s3, bucket, "night-2/_SUCCESS")
        counts = manifest["incremental"]
        # 13 inputs: 2 added, 1 rewritten, 1 renamed, 1 fixed and 1 failed before (retried) are computed.
        expected = {
            "carried": 7,
            "computed": 6,
            "retried": 1,
            "dropped": 2,
            "previous": f"s3://{bucket}/night-1",
        }
        assert {key: counts[key] for key in expected} == expected
        assert resumed.incremental == counts
        assert manifest["counts"] == {"inputs": 13, "succeeded": 12, "failed": 1}
        assert "7 carried, 6 computed (1 retried), 2 dropped" in resumed.render()
        import pyarrow.parquet as pq

        failures = pq.read_table(pa.BufferReader(get_bytes(s3, bucket, "night-2/_failures.parquet")))
        assert failures.column("uri").to_pylist() == [f"s3://{bucket}/in/broken-kept.jpg"]

    def test_counts_in_metrics_and_inspect(self, scenario: dict[str, Any]) -> None:
        """pipeline_job_incremental_rows and pipeline inspect show the same counts as the summary."""
        from pipeline.review.inspection import inspect_output
        from pipeline.review.text import render_inspect

        resumed, registry = scenario["resumed"], scenario["registry"]
        for kind in ("carried", "computed", "retried", "dropped"):
            sample = registry.get_sample_value(
                "pipeline_job_incremental_rows", {"run_id": resumed.run_id, "kind": kind}
            )
            assert sample == resumed.incremental[kind]
        doc = inspect_output(f"s3://{scenario['bucket']}/night-2", scenario["storage"])
        assert doc["incremental"] == resumed.incremental
        assert (
            f"previous   s3://{scenario['bucket']}/night-1: 7 carried, 6 computed (1 retried), 2 dropped"
            in (render_inspect(doc))
        )

    def test_carried_rows_were_not_computed_again(self, scenario: dict[str, Any]) -> None:
        """Carried rows keep the run id of night 1 (their images were not read); the others are night 2's."""
        rows = _rows(scenario, "night-2")
        by_uri = dict(zip(rows.column("uri").to_pylist(), rows.column("run_id").to_pylist(), strict=True))
        first, second, bucket = scenario["first"].run_id, scenario["resumed"].run_id, scenario["bucket"]
        assert sum(run == first for run in by_uri.values()) == 7
        assert by_uri[f"s3://{bucket}/in/img-03.jpg"] == first
        for computed in (
            "img-01.jpg",
            "img-02-renamed.jpg",
            "new-a.jpg",
            "broken-fixed.jpg",
            "broken-kept.jpg",
        ):
            assert by_uri[f"s3://{bucket}/in/{computed}"] == second

    def test_each_row_holds_its_inputs_fingerprint(self, scenario: dict[str, Any]) -> None:
        """Every row, carried or computed, holds its input's size and ETag as listed when night 2 ran."""
        s3, bucket = scenario["s3"], scenario["bucket"]
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="in/")["Contents"]
        expected = {f"s3://{bucket}/{item['Key']}": f"{item['Size']}:{item['ETag']}" for item in listed}
        rows = _rows(scenario, "night-2")
        found = dict(zip(rows.column("uri").to_pylist(), rows.column("fingerprint").to_pylist(), strict=True))
        assert found == expected
