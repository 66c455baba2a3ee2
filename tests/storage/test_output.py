"""pipeline.outputs.layout on S3 (moto_server): run state, refusals, crash restore, tally and commit."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from storage_s3 import FAKE_SECRET_ACCESS_KEY, free_port, list_keys, read_json

from pipeline.compute.model import Weights
from pipeline.config import StorageConfig, load_config
from pipeline.errors import JobFailedError, OutputExistsError, ResumeRefusedError, StorageError
from pipeline.inputs import row_ids
from pipeline.outputs import commit, layout, restore, run_state, safety, tally

RUN = "run-1"

pytestmark = pytest.mark.slow  # starts moto_server (an external server)


def settings(endpoint: str, **overrides: object) -> StorageConfig:
    """Storage settings for an endpoint."""
    return StorageConfig.model_validate({"endpoint_url": endpoint, "region": "us-east-1", **overrides})


def rows(uris: list[str], status: str = "ok") -> pa.Table:
    """Part rows for ``uris`` (only the columns the tally reads)."""
    return pa.table(
        {
            "row_id": [row_ids.row_id(uri) for uri in uris],
            "uri": uris,
            "status": [status] * len(uris),
            "reason": [None if status == "ok" else "not_an_image"] * len(uris),
            "error": [None] * len(uris),
        },
        schema=pa.schema([(name, pa.string()) for name in tally.TALLY_COLUMNS]),
    )


def put_table(s3: Any, bucket: str, key: str, table: pa.Table) -> None:
    """Upload one Parquet file."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


def put_part(
    s3: Any, bucket: str, base: str, uris: list[str], *, committed: bool = True, pending: bool = False
) -> None:
    """A part as Ray Data's two-phase checkpointed write leaves it."""
    put_table(s3, bucket, f"out/data/{base}-0.parquet", rows(uris))
    ids = pa.table({"row_id": [row_ids.row_id(uri) for uri in uris]})
    if committed:
        put_table(s3, bucket, f"out/_checkpoint/attempt-001/{base}.parquet", ids)
    if pending:
        put_table(s3, bucket, f"out/_checkpoint/attempt-001/{base}.pending.parquet", ids)


@pytest.fixture
def location(bucket, moto) -> layout.OutputLocation:
    """The output location ``s3://<bucket>/out``."""
    return layout.OutputLocation.open(f"s3://{bucket}/out", settings(moto.endpoint))


class TestRunState:
    def test_committed_output_is_refused(self, s3, bucket, location):
        """A committed run is not redone without --overwrite, and the message says it is committed."""
        manifest = {"run_id": RUN, "finished_at": "t", "counts": {}, "layout": {}}
        s3.put_object(Bucket=bucket, Key="out/_SUCCESS", Body=json.dumps(manifest))
        with pytest.raises(OutputExistsError, match=r"committed run 'run-1'.*--overwrite") as caught:
            run_state.check_can_start(run_state.read_run_state(location), None, "hash", overwrite=False)
        assert caught.value.exit_code == 3
        assert (
            run_state.check_can_start(run_state.read_run_state(location), None, "hash", overwrite=True)
            is None
        )

    def test_unfinished_run_is_resumed_by_its_id(self, s3, bucket, location):
        """An unfinished run with the same config is picked up from _run.json."""
        s3.put_object(
            Bucket=bucket, Key="out/_run.json", Body=json.dumps({"run_id": RUN, "config_hash": "h"})
        )
        state = run_state.read_run_state(location)
        assert run_state.check_can_start(state, None, "h", overwrite=False) == RUN
        with pytest.raises(ResumeRefusedError, match="different configuration") as caught:
            run_state.check_can_start(state, None, "other", overwrite=False)
        assert caught.value.exit_code == 11
        with pytest.raises(ResumeRefusedError, match="--run-id run-1"):
            run_state.check_can_start(state, "run-2", "h", overwrite=False)

    def test_a_commit_of_this_config_is_found_and_another_refused(self, s3, bucket, location, tmp_path):
        """Before the lease: a commit of these settings and weights is reported; another is exit 3."""
        config = load_config(None, [f"input.uri={tmp_path}", "model.random_init=true"], environ={})
        weights = Weights(None, "ab" * 32)
        assert safety.committed_here(location, config, lambda: weights.sha256, strict=False) is None
        manifest = {"run_id": RUN, "counts": {}, "layout": {}, "committed_at": "t"}
        manifest["config_hash"] = config.config_hash(weights.sha256)
        s3.put_object(Bucket=bucket, Key="out/_SUCCESS", Body=json.dumps(manifest))
        assert safety.committed_here(location, config, lambda: weights.sha256, strict=False) == manifest
        with pytest.raises(OutputExistsError, match="with this configuration; --strict"):
            safety.committed_here(location, config, lambda: weights.sha256, strict=True)
        other = Weights(None, "cd" * 32)  # the same settings, other weights' bytes
        with pytest.raises(OutputExistsError, match="with a different configuration") as caught:
            safety.committed_here(location, config, lambda: other.sha256, strict=False)
        assert caught.value.exit_code == 3

    def test_foreign_data_is_refused(self, s3, bucket, location):
        """Parts with no run state are not mixed into a new run."""
        s3.put_object(Bucket=bucket, Key="out/data/part-x-0.parquet", Body=b"x")
        with pytest.raises(ResumeRefusedError, match=r"no _run\.json"):
            run_state.check_can_start(run_state.read_run_state(location), None, "h", overwrite=False)

    def test_dead_endpoint_is_a_storage_error_quickly(self):
        """Inspecting an output with nothing listening raises StorageError (exit 4) naming URI, endpoint."""
        endpoint = f"http://127.0.0.1:{free_port()}"
        dead = layout.OutputLocation.open(
            "s3://bucket/out", settings(endpoint, max_attempts=2, connect_timeout_s=1)
        )
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            run_state.read_run_state(dead)
        assert time.monotonic() - started < 20
        assert caught.value.exit_code == 4
        assert "s3://bucket/out/_SUCCESS" in str(caught.value)
        assert endpoint in str(caught.value)

    def test_summary_is_best_effort(self):
        """A summary that cannot be written is logged, not raised (it must not hide the run's error)."""
        endpoint = f"http://127.0.0.1:{free_port()}"
        dead = layout.OutputLocation.open(
            "s3://bucket/out", settings(endpoint, max_attempts=1, connect_timeout_s=1)
        )
        assert run_state.write_summary(dead, RUN, {"status": "failed"}) is False

    def test_json_is_scrubbed_of_secrets(self, bucket, location, s3):
        """A secret value from the environment is masked in any JSON the job writes."""
        location.write_json("_summary-x.json", {"error": f"something with {FAKE_SECRET_ACCESS_KEY} in it"})
        assert FAKE_SECRET_ACCESS_KEY not in json.dumps(read_json(s3, bucket, "out/_summary-x.json"))


class TestRestore:
    def test_uncommitted_parts_are_deleted_and_written_inputs_skipped(self, s3, bucket, location):
        """Parts without a committed checkpoint go; inputs in committed parts are not redone."""
        uris = [f"s3://{bucket}/in/{index}.jpg" for index in range(9)]
        put_part(s3, bucket, "part-r-a-000000", uris[:3])
        # A write that died before its commit, then one whose rename (copy + delete) was cut in half.
        put_part(s3, bucket, "part-r-a-000001", uris[3:6], committed=False, pending=True)
        put_part(s3, bucket, "part-r-a-000002", uris[6:8], committed=True, pending=True)
        s3.put_object(Bucket=bucket, Key="out/data/part-r-b-000000-0.parquet", Body=b"no checkpoint at all")
        todo = restore.restore_checkpoint(location, uris, RUN)
        assert todo == uris[3:6] + uris[8:]
        assert list_keys(s3, bucket, "out/data/") == [
            "out/data/part-r-a-000000-0.parquet",
            "out/data/part-r-a-000002-0.parquet",
        ]
        assert not [
            key for key in list_keys(s3, bucket, "out/_checkpoint/") if key.endswith(".pending.parquet")
        ]

    def test_each_attempt_gets_a_fresh_checkpoint_folder(self, s3, bucket, location):
        """Ray Data is given an empty checkpoint path per attempt, numbered after the earlier ones."""
        assert location.new_checkpoint_dir() == "_checkpoint/attempt-001"
        put_part(s3, bucket, "part-r-a-000000", ["s3://x/1.jpg"])
        assert location.new_checkpoint_dir() == "_checkpoint/attempt-002"

    def test_empty_attempt_folders_are_not_reused_on_local_disk(self, tmp_path):
        """On a local disk an emptied attempt folder stays, and the next attempt is numbered after it."""
        (tmp_path / "out" / "_checkpoint" / "attempt-001").mkdir(parents=True)
        local = layout.OutputLocation.open(str(tmp_path / "out"), StorageConfig())
        assert local.new_checkpoint_dir() == "_checkpoint/attempt-002"


class TestTally:
    def test_counts_and_files(self, s3, bucket, location):
        """The tally counts outcomes, keeps the failed rows and lists every part with its rows."""
        put_table(s3, bucket, "out/data/part-a-0.parquet", rows(["s3://x/1", "s3://x/2"]))
        put_table(s3, bucket, "out/data/part-b-0.parquet", rows(["s3://x/3"], status="failed"))
        ids = [row_ids.row_id(uri) for uri in ("s3://x/1", "s3://x/2", "s3://x/3")]
        result = tally.tally(location, location.storage_config, ids)
        assert (result.rows, result.ok, result.failed_by_reason) == (3, 2, {"not_an_image": 1})
        assert result.failures.column("uri").to_pylist() == ["s3://x/3"]
        assert result.files == [
            {"path": "data/part-a-0.parquet", "rows": 2},
            {"path": "data/part-b-0.parquet", "rows": 1},
        ]

    def test_local_output_lists_files_relative_to_it(self, tmp_path):
        """On a local disk too, the manifest's file paths are relative to the output."""
        (tmp_path / "out" / "data").mkdir(parents=True)
        pq.write_table(rows(["/img/1.jpg"]), tmp_path / "out" / "data" / "part-a-0.parquet")
        local = layout.OutputLocation.open(str(tmp_path / "out"), StorageConfig())
        result = tally.tally(local, StorageConfig(), [row_ids.row_id("/img/1.jpg")])
        assert result.files == [{"path": "data/part-a-0.parquet", "rows": 1}]

    def test_a_row_neither_ok_nor_failed_is_not_committed(self, tmp_path):
        """A part row with another status stops the commit, naming how many."""
        (tmp_path / "out" / "data").mkdir(parents=True)
        part = pa.concat_tables([rows(["/img/1.jpg"]), rows(["/img/2.jpg"], status="pending")])
        pq.write_table(part, tmp_path / "out" / "data" / "part-a-0.parquet")
        local = layout.OutputLocation.open(str(tmp_path / "out"), StorageConfig())
        ids = [row_ids.row_id(uri) for uri in ("/img/1.jpg", "/img/2.jpg")]
        with pytest.raises(JobFailedError, match="1 rows with an unknown status; not committing"):
            tally.tally(local, StorageConfig(), ids)

    def test_duplicates_are_not_committed(self, s3, bucket, location):
        """A row written twice stops the commit."""
        put_table(s3, bucket, "out/data/part-a-0.parquet", rows(["s3://x/1"]))
        put_table(s3, bucket, "out/data/part-b-0.parquet", rows(["s3://x/1"]))
        with pytest.raises(JobFailedError, match="1 duplicated rows"):
            tally.tally(location, location.storage_config, [row_ids.row_id("s3://x/1")])

    def test_missing_rows_are_not_committed(self, s3, bucket, location):
        """An input without a row stops the commit."""
        put_table(s3, bucket, "out/data/part-a-0.parquet", rows(["s3://x/1"]))
        with pytest.raises(JobFailedError, match="1 missing, 0 unexpected"):
            tally.tally(
                location, location.storage_config, [row_ids.row_id(u) for u in ("s3://x/1", "s3://x/2")]
            )

    def test_commit_writes_failures_then_manifest(self, s3, bucket, location):
        """The dead-letter table and the manifest (with its file list) are written."""
        put_table(s3, bucket, "out/data/part-a-0.parquet", rows(["s3://x/1"], status="failed"))
        result = tally.tally(location, location.storage_config, [row_ids.row_id("s3://x/1")])
        commit.commit(location, result, {"run_id": RUN, "layout": {"data": "data"}})
        manifest = read_json(s3, bucket, "out/_SUCCESS")
        assert manifest["layout"]["files"] == [{"path": "data/part-a-0.parquet", "rows": 1}]
        assert manifest["manifest_version"] == layout.MANIFEST_VERSION
        failures = pq.read_table(
            io.BytesIO(s3.get_object(Bucket=bucket, Key="out/_failures.parquet")["Body"].read())
        )
        assert failures.column("reason").to_pylist() == ["not_an_image"]
