"""Tables on the S3 test server: a Parquet commit given its table commit, a table as output.previous.

One module-scoped history: night 1 is committed as Parquet; rerun with ``output.format=iceberg``
(and, on a copy of its folder, ``lance``) it gains its table commit without computing a row.
The inputs then change (added, deleted, rewritten, a broken one fixed); night 2 runs twice
incrementally, once from the Iceberg snapshot (``iceberg:ns.table``), once from the Lance
version (the dataset's URI), and a full recompute of the same inputs is the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from storage_s3 import list_keys, read_json, read_parts

from pipeline.cli import samples
from pipeline.errors import ConfigError, OutputExistsError
from pipeline.outputs.tables import target as tables
from pipeline.outputs.tables.iceberg import load_catalog
from pipeline.outputs.tables.lance import open_dataset
from pipeline.run.job import run_job
from pipeline.run.preflight import check_run

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.run.summary import RunSummary

pytestmark = pytest.mark.slow

BUCKET = "table-previous"
ICEBERG_TABLE = "nightly.preds"
LANCE_TABLE = f"s3://{BUCKET}/tables/preds.lance"
SMALL = {
    "preprocess.resize_size": 32,
    "preprocess.crop_size": 32,
    "preprocess.batch_size": 4,
    "inference.batch_size": 4,
    "output.rows_per_file": 4,
    "storage.region": "us-east-1",
    "resources.stall_timeout_s": 120,
}
COMPARED = ["row_id", "uri", "status", "reason", "top_k_ids", "top_k_labels", "label", "model_sha256"]


def _jpeg(seed: int) -> bytes:
    """A 32-px photo-like JPEG."""
    return samples.jpeg_bytes(samples.photo_like(np.random.default_rng(seed), 32, 32))


@dataclass
class History:
    """The module's runs and what each step saw."""

    configs: dict[str, Config]  # how each output was made
    night1: RunSummary
    plans: dict[str, str]  # what pipeline plan said before the table commits
    made_tables: dict[str, RunSummary]  # the Parquet commit, rerun with a table format
    again: RunSummary  # the Iceberg rerun, rerun
    other_table: Exception  # the Iceberg-committed folder, rerun with Lance
    night1_success: dict[str, dict[str, Any]]  # each folder's _SUCCESS after its table commit
    night2: dict[str, RunSummary]  # from each table, and the full recompute


def _copy_folder(s3: Any, source: str, target: str) -> None:
    """A committed output copied under another prefix (its lease left behind)."""
    for key in list_keys(s3, BUCKET, f"{source}/"):
        if "/_lease" not in key:
            s3.copy_object(
                Bucket=BUCKET, Key=f"{target}/{key[len(source) + 1 :]}", CopySource=f"{BUCKET}/{key}"
            )


@pytest.fixture(scope="module")
def history(ray_session: None, s3: Any, moto: Any, local_config: Any, tmp_path_factory: Any) -> History:
    """Night 1, its table commits, the changed inputs, night 2 from each table, a full recompute."""
    tmp: Path = tmp_path_factory.mktemp("table-previous")
    s3.create_bucket(Bucket=BUCKET)
    for index in range(8):
        s3.put_object(Bucket=BUCKET, Key=f"in/img-{index:02d}.jpg", Body=_jpeg(index))
    s3.put_object(Bucket=BUCKET, Key="in/broken-fixed.jpg", Body=b"not an image yet")
    s3.put_object(Bucket=BUCKET, Key="in/broken-kept.jpg", Body=b"not an image, and stays so")

    def config(out: str, fmt: str = "parquet", **extra: object) -> Config:
        settings: dict[str, object] = {
            **SMALL,
            "storage.endpoint_url": moto.endpoint,
            "output.catalog.uri": f"sqlite:///{tmp}/catalog.sqlite",
            "output.catalog.warehouse": f"s3://{BUCKET}/wh",
            **extra,
        }
        if fmt != "parquet":
            settings.update(
                {"output.format": fmt, "output.table": ICEBERG_TABLE if fmt == "iceberg" else LANCE_TABLE}
            )
        return local_config(
            f"s3://{BUCKET}/in",
            f"s3://{BUCKET}/{out}",
            **{k.replace(".", "__"): v for k, v in settings.items()},
        )

    configs = {"parquet": config("night-1"), "iceberg": config("night-1", "iceberg")}
    night1 = run_job(configs["parquet"])
    _copy_folder(s3, "night-1", "night-1-lance")
    configs["lance"] = config("night-1-lance", "lance")
    plans = {fmt: check_run(configs[fmt]).action for fmt in ("parquet", "iceberg")}
    made = {fmt: run_job(configs[fmt]) for fmt in ("iceberg", "lance")}
    again = run_job(configs["iceberg"])
    with pytest.raises(OutputExistsError) as other:
        run_job(config("night-1", "lance"))
    # The inputs change: one added, one deleted, one rewritten in place, a broken one fixed.
    s3.put_object(Bucket=BUCKET, Key="in/new-a.jpg", Body=_jpeg(100))
    s3.delete_object(Bucket=BUCKET, Key="in/img-00.jpg")
    s3.put_object(Bucket=BUCKET, Key="in/img-01.jpg", Body=_jpeg(201))
    s3.put_object(Bucket=BUCKET, Key="in/broken-fixed.jpg", Body=_jpeg(300))
    night2 = {
        "iceberg": run_job(config("night-2-iceberg", **{"output.previous": f"iceberg:{ICEBERG_TABLE}"})),
        "lance": run_job(config("night-2-lance", **{"output.previous": LANCE_TABLE})),
        "full": run_job(config("night-2-full")),
    }
    configs["night2"] = config("night-2-probe", **{"output.previous": f"iceberg:{ICEBERG_TABLE}"})
    success = {
        fmt: read_json(s3, BUCKET, f"{folder}/_SUCCESS")
        for fmt, folder in (("iceberg", "night-1"), ("lance", "night-1-lance"))
    }
    return History(configs, night1, plans, made, again, other.value, success, night2)


def _iceberg_runs(config: Config) -> list[str]:
    """The run ids of the Iceberg table's snapshots, oldest first."""
    table = load_catalog(config.output.catalog, config.storage).load_table(ICEBERG_TABLE)
    return [str(snap.summary[tables.RUN_ID_PROPERTY]) for snap in table.metadata.snapshots]


def _lance_runs(config: Config) -> list[str]:
    """The run ids of the Lance dataset's versions that carry one, oldest first."""
    dataset = open_dataset(LANCE_TABLE, config.storage)
    runs = []
    for version in dataset.versions():
        properties = dataset.read_transaction(version["version"]).transaction_properties or {}
        if tables.RUN_ID_PROPERTY in properties:
            runs.append(properties[tables.RUN_ID_PROPERTY])
    return runs


class TestParquetCommitMadeATable:
    def test_rerun_with_a_table_format_makes_the_table_commit(self, history: History) -> None:
        """A Parquet commit rerun with output.format iceberg or lance gets its table commit, none computed."""
        run_id = history.night1.run_id
        for fmt in ("iceberg", "lance"):
            made = history.made_tables[fmt]
            assert (made.status, made.run_id, made.processed_this_run) == ("table_committed", run_id, 0)
            assert made.inputs == 10
        assert _iceberg_runs(history.configs["iceberg"]) == [run_id]
        assert _lance_runs(history.configs["lance"]) == [run_id]

    def test_table_holds_every_input_once_and_success_names_it(self, history: History, s3: Any) -> None:
        """The table commit holds the committed parts' rows, each input once, and ``_SUCCESS`` names it."""
        from pyiceberg.expressions import EqualTo

        run_id = history.night1.run_id
        config = history.configs["iceberg"]
        table = load_catalog(config.output.catalog, config.storage).load_table(ICEBERG_TABLE)
        iceberg = table.scan(row_filter=EqualTo("run_id", run_id)).to_arrow()
        lance = open_dataset(LANCE_TABLE, config.storage).to_table(filter=f"run_id = '{run_id}'")
        parts = read_parts(s3, BUCKET, "night-1")
        for rows in (iceberg, lance):
            assert sorted(rows.column("row_id").to_pylist()) == sorted(parts.column("row_id").to_pylist())
            assert rows.num_rows == 10
        assert history.night1_success["iceberg"]["table"] == {
            "format": "iceberg",
            "name": ICEBERG_TABLE,
            "commit": table.metadata.snapshots[-1].snapshot_id,
        }
        assert history.night1_success["lance"]["table"]["name"] == LANCE_TABLE
        assert history.night1_success["iceberg"]["run_id"] == run_id

    def test_plan_says_so_before(self, history: History) -> None:
        """`pipeline plan` of the committed folder: nothing to do as Parquet, the table commit as Iceberg."""
        assert history.plans == {"parquet": "nothing", "iceberg": "table_commit"}

    def test_rerun_after_the_table_commit_is_already_committed(self, history: History) -> None:
        """Once the table holds the run, the same rerun finds it committed and adds no snapshot."""
        assert history.again.status == "already_committed"
        assert _iceberg_runs(history.configs["iceberg"]) == [history.night1.run_id]

    def test_a_second_table_for_a_committed_run_is_refused(self, history: History) -> None:
        """A folder committed to one table, rerun naming another: exit 3 naming output.format, none added."""
        message = str(history.other_table)
        assert "output.format=lance" in message
        assert ICEBERG_TABLE in message
        assert _lance_runs(history.configs["lance"]) == [history.night1.run_id]


class TestPreviousFromATable:
    def test_equals_a_full_recompute_row_for_row(self, history: History, s3: Any) -> None:
        """Night 2 from the Iceberg snapshot, and from the Lance version, equals a full recompute (fp32)."""
        full = read_parts(s3, BUCKET, "night-2-full").sort_by("row_id")
        assert full.num_rows == 10
        for fmt in ("iceberg", "lance"):
            assert history.night2[fmt].status == "succeeded"
            rows = read_parts(s3, BUCKET, f"night-2-{fmt}").sort_by("row_id")
            assert rows.select(COMPARED).to_pylist() == full.select(COMPARED).to_pylist(), fmt
            np.testing.assert_allclose(
                np.array(rows.column("score").to_pylist(), dtype=float),
                np.array(full.column("score").to_pylist(), dtype=float),
                rtol=0,
                atol=1e-5,
            )
            assert rows.schema == full.schema  # the carried part has the parts' types

    def test_counts_name_the_table_run_and_rows_stream(self, history: History, s3: Any) -> None:
        """Counts as from a folder, the previous named as the table's run; rows streamed, no part copied."""
        run_id = history.night1.run_id
        # 10 inputs: 1 added, 1 rewritten, 1 fixed and 1 failed before (retried) are computed.
        expected = {"carried": 6, "computed": 4, "retried": 1, "dropped": 1, "parts_copied": 0}
        for fmt, named in (("iceberg", f"iceberg:{ICEBERG_TABLE}"), ("lance", LANCE_TABLE)):
            counts = history.night2[fmt].incremental
            assert counts is not None
            assert {key: counts[key] for key in expected} == expected
            assert counts["previous"] == f"{named}@{run_id}"
            assert read_json(s3, BUCKET, f"night-2-{fmt}/_SUCCESS")["incremental"] == counts
            rows = read_parts(s3, BUCKET, f"night-2-{fmt}")
            assert rows.column("run_id").to_pylist().count(run_id) == 6  # carried, not computed

    def test_refused_as_a_folder_is(self, history: History, s3: Any) -> None:
        """A table's run not committed, made otherwise, or not there: refused naming output.previous."""
        from pipeline.outputs.tables.previous_table import find_any_previous

        config = history.configs["night2"]
        same = history.night1_success["iceberg"]["config_hash"]
        found, why = find_any_previous(config, same)
        assert found is not None
        assert why is None
        with pytest.raises(ConfigError, match="another configuration") as other:
            find_any_previous(config, "another-hash")
        assert other.value.key == "output.previous"
        recompute = config.model_copy(deep=True)
        recompute.output.previous_other_config = "recompute"
        assert find_any_previous(recompute, "another-hash")[0] is None
        missing = config.model_copy(deep=True)
        for name in (
            f"iceberg:{ICEBERG_TABLE}@no-such-run",
            "iceberg:nightly.nothing",
            f"{LANCE_TABLE}x.lance",
        ):
            missing.output.previous = name
            with pytest.raises(ConfigError, match="nothing is there"):
                find_any_previous(missing, same)
        missing.output.previous_missing = "full_run"
        assert find_any_previous(missing, same)[0] is None
        manifest = s3.get_object(Bucket=BUCKET, Key="night-1-lance/_SUCCESS")["Body"].read()
        s3.delete_object(Bucket=BUCKET, Key="night-1-lance/_SUCCESS")
        try:
            uncommitted = config.model_copy(deep=True)
            uncommitted.output.previous = LANCE_TABLE
            with pytest.raises(ConfigError, match="not committed"):
                find_any_previous(uncommitted, same)
        finally:
            s3.put_object(Bucket=BUCKET, Key="night-1-lance/_SUCCESS", Body=manifest)
