"""Outputs as tables on the S3 test server: Iceberg (SQL catalog on SQLite) and Lance, exactly once.

One module-scoped history serves every test: a night before (run A, one row) is committed to
each table; run B writes its parts and is refused by the failure budget (rows written, not
committed), its folder copied for Lance; each copy's commit is then resumed in a real
``pipeline run`` subprocess that is SIGKILLed between the data files and the table commit;
the in-process reruns commit once each, and the next reruns find them committed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from storage_s3 import REGION, job_environment, list_keys, read_json, storage_flags, upload_images

from pipeline.config import Config, dump_yaml
from pipeline.errors import ConfigError, FailureBudgetExceededError, TableCommitRefusedError
from pipeline.inputs import row_ids
from pipeline.outputs.layout import OutputLocation
from pipeline.outputs.tables import table_commit
from pipeline.outputs.tables import target as tables
from pipeline.outputs.tables.iceberg import load_catalog
from pipeline.outputs.tables.lance import open_dataset
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow

ICEBERG_TABLE = "nightly.embeddings"
IMAGES = 8  # and 2 broken files: 10 inputs, 2 failed rows
REPO = Path(__file__).resolve().parents[2]
RUN_A = "20261205T010000Z-night1"  # the run before, one row, committed straight to each table

# The subprocess: patch the table commit to SIGKILL its own process, then run the job's CLI.
KILL_AT_COMMIT = """
import os, signal, sys
from lance.dataset import LanceDataset
from pipeline.cli import main
from pipeline.outputs.tables.iceberg import IcebergTarget

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

IcebergTarget.commit = die  # the parts are the data files: killed before add_files
LanceDataset.commit = staticmethod(die)  # fragments written, not committed
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


@dataclass
class History:
    """What the module's runs left: configs, run ids, and what each step saw."""

    uris: list[str]
    iceberg: Config  # run B's config, Iceberg
    lance: Config  # run B's config (its copy), Lance
    run_b: str
    after_kill: dict[str, Any]
    reruns: dict[str, Any]
    again: dict[str, Any]


def _config(local_config: Any, moto: Any, bucket: str, out: str, tmp: Path, fmt: str, **extra: Any) -> Config:
    """An embed run on the test server writing ``out``; ``fmt`` names the table."""
    table = ICEBERG_TABLE if fmt == "iceberg" else f"s3://{bucket}/tables/embeddings.lance"
    return local_config(
        f"s3://{bucket}/in",
        f"s3://{bucket}/{out}",
        storage__endpoint_url=moto.endpoint,
        storage__region=REGION,
        model__task="embed",
        preprocess__resize_size=32,
        preprocess__crop_size=32,
        output__format=fmt,
        output__table=table,
        output__index="ivf_pq" if fmt == "lance" else "none",
        **{
            "output.catalog.uri": f"sqlite:///{tmp}/catalog.sqlite",
            "output.catalog.warehouse": f"s3://{bucket}/wh",
        },
        **extra,
    )


def _copy_folder(s3: Any, bucket: str, source: str, target: str) -> None:
    """Copy an unfinished output (its parts, run state, checkpoints) under another prefix."""
    for key in list_keys(s3, bucket, f"{source}/"):
        if "/_lease" not in key:
            s3.copy_object(
                Bucket=bucket, Key=f"{target}/{key[len(source) + 1 :]}", CopySource=f"{bucket}/{key}"
            )


def _snapshots(config: Config) -> list[str]:
    """The run ids of the Iceberg table's snapshots, oldest first."""
    table = load_catalog(config.output.catalog, config.storage).load_table(ICEBERG_TABLE)
    return [str(snap.summary[tables.RUN_ID_PROPERTY]) for snap in table.metadata.snapshots]


def _versions(config: Config) -> list[str | None]:
    """Per Lance version, the run id its transaction carries (None: an index build)."""
    dataset = open_dataset(str(config.output.table), config.storage)
    found = []
    for version in dataset.versions():
        properties = dataset.read_transaction(version["version"]).transaction_properties or {}
        found.append(properties.get(tables.RUN_ID_PROPERTY))
    return found


@pytest.fixture(scope="module")
def history(ray_session, s3, moto, local_config, tmp_path_factory) -> History:
    """Runs A and B as the module docstring says, on one bucket."""
    import ray

    tmp = tmp_path_factory.mktemp("tables")
    bucket = "tables-test"
    s3.create_bucket(Bucket=bucket)
    uris = upload_images(s3, bucket, "in", IMAGES)
    refused = _config(local_config, moto, bucket, "night2", tmp, "iceberg", output__max_failure_fraction=0.0)
    with pytest.raises(FailureBudgetExceededError) as budget:  # rows written, not committed
        run_job(refused)
    run_b = budget.value.args[0].split("resumes run ")[1].split()[0]
    # The night before: one of run B's rows under another run id, committed to each table.
    location = OutputLocation.open(refused.output.uri, refused.storage)
    part = location.read_table(
        next(name for name in location.list_files("data") if name.endswith(".parquet"))
    )
    night1 = part.slice(0, 1).set_column(
        part.schema.get_field_index("run_id"), part.schema.field("run_id"), pa.array([RUN_A])
    )
    earlier = OutputLocation.open(f"s3://{bucket}/night1", refused.storage)
    earlier.write_table("data/part-0.parquet", night1)
    for fmt in ("iceberg", "lance"):
        target = table_commit.target_of(_config(local_config, moto, bucket, "night1", tmp, fmt))
        target.commit(earlier, ["data/part-0.parquet"], {tables.RUN_ID_PROPERTY: RUN_A})  # type: ignore[union-attr]
    _copy_folder(s3, bucket, "night2", "night2-lance")
    configs = {
        "iceberg": _config(local_config, moto, bucket, "night2", tmp, "iceberg"),
        "lance": _config(local_config, moto, bucket, "night2-lance", tmp, "lance"),
    }
    address = ray.get_runtime_context().gcs_address
    killed = {}
    for fmt, config in configs.items():  # both at once: each is its own output and table
        path = tmp / f"{fmt}.yaml"
        path.write_text(
            dump_yaml(
                config.model_copy(
                    update={"resources": config.resources.model_copy(update={"ray_address": address})}
                )
            )
        )
        env = job_environment(PYTHONPATH=str(REPO))
        with (tmp / f"{fmt}.log").open("w") as log:  # a file: a full pipe would block the job
            killed[fmt] = subprocess.Popen(
                [sys.executable, "-c", KILL_AT_COMMIT, str(path)], env=env, stdout=log, stderr=log
            )
    codes = {
        fmt: (process.wait(timeout=300), (tmp / f"{fmt}.log").read_text()[-2000:])
        for fmt, process in killed.items()
    }
    after_kill = {
        "codes": {fmt: code for fmt, (code, _) in codes.items()},
        "logs": {fmt: log for fmt, (_, log) in codes.items()},
        "iceberg": _snapshots(configs["iceberg"]),
        "lance": _versions(configs["lance"]),
        "success": [key for key in list_keys(s3, bucket, "night2") if key.endswith("_SUCCESS")],
    }
    reruns = {fmt: run_job(config) for fmt, config in configs.items()}
    again = {fmt: run_job(config) for fmt, config in configs.items()}
    return History(uris, configs["iceberg"], configs["lance"], run_b, after_kill, reruns, again)


class TestExactlyOnce:
    def test_sigkill_before_table_commit_leaves_previous_snapshot(self, history: History) -> None:
        """A run SIGKILLed between its data files and the table commit leaves each table as it was."""
        assert history.after_kill["codes"] == {"iceberg": -signal.SIGKILL, "lance": -signal.SIGKILL}, (
            history.after_kill["logs"]
        )
        assert history.after_kill["iceberg"] == [RUN_A]
        assert [run for run in history.after_kill["lance"] if run] == [RUN_A]
        assert history.after_kill["success"] == []

    def test_rerun_commits_once_then_is_committed(self, history: History) -> None:
        """The rerun resumes (nothing redone) and commits one snapshot or version; the next commits none."""
        for fmt in ("iceberg", "lance"):
            rerun, again = history.reruns[fmt], history.again[fmt]
            assert (rerun.status, rerun.run_id, rerun.processed_this_run) == ("succeeded", history.run_b, 0)
            assert again.status == "already_committed"
        assert _snapshots(history.iceberg) == [RUN_A, history.run_b]
        assert [run for run in _versions(history.lance) if run] == [RUN_A, history.run_b]

    def test_stop_after_table_commit_rerun_writes_only_success(self, history: History, s3) -> None:
        """Stopped between the table commit and ``_SUCCESS``: the rerun finds its run there, commits none."""
        for config, folder in ((history.iceberg, "night2"), (history.lance, "night2-lance")):
            made = read_json(s3, "tables-test", f"{folder}/_SUCCESS")["table"]
            s3.delete_object(Bucket="tables-test", Key=f"{folder}/_SUCCESS")
            rerun = run_job(config)
            assert (rerun.status, rerun.run_id, rerun.processed_this_run) == ("succeeded", history.run_b, 0)
            assert read_json(s3, "tables-test", f"{folder}/_SUCCESS")["table"] == made
        assert _snapshots(history.iceberg) == [RUN_A, history.run_b]
        assert [run for run in _versions(history.lance) if run] == [RUN_A, history.run_b]

    def test_second_commit_of_a_run_is_refused(self, history: History) -> None:
        """Committing run B again, straight through either target, is refused; nothing is added."""
        for config, count in ((history.iceberg, _snapshots), (history.lance, _versions)):
            target = table_commit.target_of(config)
            assert target is not None
            before = count(config)
            location = OutputLocation.open(config.output.uri, config.storage)
            with pytest.raises(TableCommitRefusedError, match=history.run_b):
                target.commit(location, ["data/none.parquet"], {tables.RUN_ID_PROPERTY: history.run_b})
            assert count(config) == before

    def test_overwrite_of_parts_an_iceberg_table_references_is_refused(self, history: History, s3) -> None:
        """--overwrite of a folder whose parts are Iceberg's data files: exit 2, nothing deleted."""
        keys = list_keys(s3, "tables-test", "night2/data/")
        with pytest.raises(ConfigError) as refused:
            run_job(history.iceberg, overwrite=True)
        assert refused.value.key == "output.uri"
        assert "Iceberg table" in str(refused.value)
        assert list_keys(s3, "tables-test", "night2/data/") == keys
        assert _snapshots(history.iceberg) == [RUN_A, history.run_b]

    def test_success_names_the_table_commit(self, history: History, s3) -> None:
        """``_SUCCESS`` beside the parts names the table and the snapshot / version that committed them."""
        bucket = "tables-test"
        iceberg = read_json(s3, bucket, "night2/_SUCCESS")["table"]
        table = load_catalog(history.iceberg.output.catalog, history.iceberg.storage).load_table(
            ICEBERG_TABLE
        )
        assert iceberg == {
            "format": "iceberg",
            "name": ICEBERG_TABLE,
            "commit": table.metadata.snapshots[-1].snapshot_id,
        }
        lance = read_json(s3, bucket, "night2-lance/_SUCCESS")["table"]
        assert lance["format"] == "lance"
        assert _versions(history.lance)[lance["commit"] - 1] == history.run_b


class TestReaders:
    def test_pyiceberg_scan_counts_each_input_once(self, history: History) -> None:
        """A pyiceberg scan of run B's partition holds every input exactly once; failures by status."""
        from pyiceberg.expressions import EqualTo

        table = load_catalog(history.iceberg.output.catalog, history.iceberg.storage).load_table(
            ICEBERG_TABLE
        )
        rows = table.scan(row_filter=EqualTo("run_id", history.run_b)).to_arrow()
        assert sorted(rows.column("row_id").to_pylist()) == sorted(
            row_ids.row_id(uri) for uri in history.uris
        )
        assert rows.column("status").to_pylist().count("failed") == 2
        assert table.scan().to_arrow().num_rows == len(history.uris) + 1
        assert [field.name for field in table.spec().fields] == ["run_date"]

    def test_lance_reader_counts_each_input_once(self, history: History) -> None:
        """The Lance dataset holds run B's inputs exactly once, the embedding as a fixed-size vector."""
        dataset = open_dataset(str(history.lance.output.table), history.lance.storage)
        rows = dataset.to_table(filter=f"run_id = '{history.run_b}'", columns=["row_id"])
        assert sorted(rows.column("row_id").to_pylist()) == sorted(
            row_ids.row_id(uri) for uri in history.uris
        )
        assert dataset.schema.field("embedding").type.list_size == 512
        assert dataset.count_rows() == len(history.uris) + 1

    def test_lance_knn_finds_the_image_itself_first(self, history: History) -> None:
        """With the IVF-PQ index built after the commit, an image's own embedding finds that image first."""
        dataset = open_dataset(str(history.lance.output.table), history.lance.storage)
        assert [index["type"] for index in dataset.list_indices()] == ["IVF_PQ"]
        ok = dataset.to_table(
            filter=f"status = 'ok' AND run_id = '{history.run_b}'", columns=["row_id", "embedding"]
        )
        for index in (0, ok.num_rows - 1):
            query = ok.column("embedding")[index].values.to_numpy()
            near = dataset.to_table(
                nearest={"column": "embedding", "q": query, "k": 3, "nprobes": 4, "refine_factor": 5},
                filter=f"run_id = '{history.run_b}'",
                prefilter=True,
                columns=["row_id"],
            )
            assert near.column("row_id")[0].as_py() == ok.column("row_id")[index].as_py()

    def test_spark_reads_iceberg_when_its_runtime_is_installed(self, history: History) -> None:
        """Spark counts run B's rows in the Iceberg table, given iceberg-spark-runtime (a Maven jar)."""
        import pyspark

        jars = sorted((Path(pyspark.__file__).parent / "jars").glob("iceberg-spark-runtime*.jar"))
        if not jars:
            pytest.skip(
                "iceberg-spark-runtime is published on Maven only, and this machine reaches PyPI "
                "alone: pyspark is installed without it (docs/storage.md, 'Reading the tables')"
            )
        from pyspark.sql import SparkSession

        catalog = load_catalog(history.iceberg.output.catalog, history.iceberg.storage)
        metadata = catalog.load_table(ICEBERG_TABLE).metadata_location.replace("s3://", "s3a://")
        spark = SparkSession.builder.master("local[1]").getOrCreate()
        try:
            rows = spark.read.format("iceberg").load(metadata).where(f"run_id = '{history.run_b}'")
            assert rows.count() == len(history.uris)
        finally:
            spark.stop()


class TestReview:
    def test_inspect_compare_report_read_a_table_run(
        self, history: History, moto, tmp_path, capsys, monkeypatch
    ) -> None:
        """inspect, compare and report take a table output (a catalog name, a Lance URI): run B's rows."""
        from pipeline.cli import main

        catalog = history.iceberg.output.catalog
        monkeypatch.setenv("PYICEBERG_CATALOG__PIPELINE__URI", catalog["uri"])
        monkeypatch.setenv("PYICEBERG_CATALOG__PIPELINE__WAREHOUSE", catalog["warehouse"])
        flags = storage_flags(moto.endpoint)
        iceberg, lance = f"iceberg:{ICEBERG_TABLE}", str(history.lance.output.table)
        for name in (iceberg, lance):
            assert main(["inspect", name, "--json", *flags]) == 0
            doc = json.loads(capsys.readouterr().out)
            assert doc["uri"] == f"{name}@{history.run_b}"
            assert doc["counts"] == {"rows": len(history.uris), "ok": len(history.uris) - 2, "failed": 2}
            assert doc["consistent_with_manifest"] is True
        assert main(["compare", iceberg, lance, "--json", "--min-agreement", "1.0", *flags]) == 0
        assert json.loads(capsys.readouterr().out)["agreement"] == 1.0  # the same vectors, two tables
        assert main(["report", f"{lance}@{history.run_b}", "--html", str(tmp_path / "run.html"), *flags]) == 0
        assert history.run_b in (tmp_path / "run.html").read_text(encoding="utf-8")
        assert main(["inspect", f"{iceberg}@no-such-run", *flags]) == 12


class TestConfig:
    @pytest.mark.parametrize(
        ("settings", "key"),
        [
            ({"output.format": "iceberg"}, "output.table"),
            ({"output.format": "iceberg", "output.table": "embeddings"}, "output.table"),
            ({"output.format": "iceberg", "output.table": "a.b", "output.index": "ivf_pq"}, "output.index"),
            ({"output.format": "lance", "output.table": "t.lance", "output.index": "ivf_pq"}, "output.index"),
        ],
    )
    def test_table_settings_that_do_not_fit_are_refused(self, settings: dict[str, str], key: str) -> None:
        """A table format without its table, or an index without Lance and vectors: exit 2 naming the key."""
        from pipeline.config import load_config

        flags = [
            f"{name}={value}"
            for name, value in {"model.random_init": "true", "input.uri": "/in", **settings}.items()
        ]
        with pytest.raises(ConfigError) as refused:
            load_config(None, flags, environ={})
        assert refused.value.key == key
