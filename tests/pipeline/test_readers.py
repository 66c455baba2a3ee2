"""What common Parquet readers see when pointed at a committed output folder.

One real job (40 good images, 3 broken files) is committed once (tests/pipeline/conftest.py's
``reported_run``, which test_report.py and test_inspect.py read too), and each
reader is asked for the query docs/storage.md gives: every one must see each input exactly
once, so the failed rows (in ``data/`` and again in ``_failures.parquet``) are not counted
twice and ``_inputs.parquet`` and ``_checkpoint/`` are not read as predictions.

pyarrow and pandas skip ``_``- and ``.``-prefixed files and folders under the root. DuckDB
skips nothing: its globs match ``_``-prefixed names too, so a DuckDB reader names ``data/``.
Spark skips ``_``/``.`` names but, without partition folders, reads only files directly in
the folder it is given: from the root it needs ``recursiveFileLookup``. The tests marked
"pins" hold those two facts, so the documentation is told when a new release changes them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.outputs.layout import CHECKPOINT_DIR, DATA_DIR, FAILURES, INPUTS, REPORT

pytestmark = [
    pytest.mark.slow,
    # PySpark 4.3 warns that it does not fully support pandas 3; nothing here goes through pandas.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

INPUTS_COUNT = 43  # conftest's sample_images: 40 images and 3 broken files
FAILED_COUNT = 3


@pytest.fixture(scope="module")
def output(reported_run) -> Path:
    """The root of one committed output with failed rows (the broken files)."""
    # output.report: the page beside _SUCCESS must not trip a reader either
    root, summary = reported_run
    assert (summary.inputs, summary.failed) == (INPUTS_COUNT, FAILED_COUNT)
    # What the readers must step over: the dead-letter table, the inputs, the checkpoint.
    assert pq.read_metadata(root / FAILURES).num_rows == FAILED_COUNT
    assert pq.read_metadata(root / INPUTS).num_rows == INPUTS_COUNT
    assert list((root / CHECKPOINT_DIR).rglob("*.parquet"))
    assert (root / REPORT).is_file()
    return root


def _exactly_once(row_ids: list[str]) -> None:
    assert len(row_ids) == INPUTS_COUNT, f"{len(row_ids)} rows for {INPUTS_COUNT} inputs"
    assert len(set(row_ids)) == INPUTS_COUNT, "a row_id appears more than once"


class TestPyarrowAndPandas:
    def test_pq_read_table_of_the_root(self, output):
        _exactly_once(pq.read_table(output, columns=["row_id"]).column("row_id").to_pylist())

    def test_dataset_of_the_root(self, output):
        dataset = pads.dataset(output, format="parquet")
        assert all(Path(f).relative_to(output).parts[0] == DATA_DIR for f in dataset.files)
        _exactly_once(dataset.to_table(columns=["row_id"]).column("row_id").to_pylist())

    def test_pandas_read_parquet_of_the_root(self, output):
        import pandas as pd

        frame = pd.read_parquet(output, columns=["row_id", "status"])
        _exactly_once(frame["row_id"].tolist())
        assert (frame["status"] == "failed").sum() == FAILED_COUNT


class TestDuckDB:
    @pytest.fixture(scope="class")
    def duckdb(self) -> Iterator[object]:
        import duckdb

        with duckdb.connect() as connection:
            yield connection

    def _row_ids(self, duckdb, pattern: str) -> list[str]:
        return [row[0] for row in duckdb.execute("SELECT row_id FROM read_parquet(?)", [pattern]).fetchall()]

    def test_data_folder(self, duckdb, output):
        _exactly_once(self._row_ids(duckdb, f"{output}/{DATA_DIR}/*.parquet"))

    def test_root_without_underscore_names(self, duckdb, output):
        """From the root, the pattern that skips what pyarrow and Spark skip: ``[!_]*`` folders."""
        _exactly_once(self._row_ids(duckdb, f"{output}/[!_]*/**/*.parquet"))

    def test_pins_root_glob_reads_bookkeeping_too(self, duckdb, output):
        """Pins: DuckDB's ``**/*.parquet`` (or the bare folder) reads every ``_``-prefixed Parquet file."""
        rows = duckdb.execute(
            "SELECT filename, count(*) FROM read_parquet(?, filename = true) GROUP BY filename",
            [f"{output}/**/*.parquet"],
        ).fetchall()
        tops = {Path(name).relative_to(output).parts[0] for name, _ in rows}
        assert tops == {DATA_DIR, FAILURES, INPUTS, CHECKPOINT_DIR}
        assert sum(count for _, count in rows) > INPUTS_COUNT
        # The folder itself, without a pattern, reads the same files.
        (whole,) = duckdb.execute("SELECT count(*) FROM read_parquet(?)", [str(output)]).fetchone()
        assert whole == sum(count for _, count in rows)


class TestSpark:
    @pytest.fixture(scope="class")
    def spark(self) -> Iterator[object]:
        """One local[1] Spark session for the class (a JVM start costs 5-20 s)."""
        if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
            reason = (
                "no Java runtime (java on PATH or JAVA_HOME): pyspark needs one; "
                "scripts/setup.sh dev installs Debian's default-jre-headless as root"
            )
            if os.environ.get("CI"):
                pytest.fail(f"{reason}, and CI must run the Spark test")
            pytest.skip(reason)
        from pyspark.sql import SparkSession

        with tempfile.TemporaryDirectory(prefix="spark-test-") as scratch:
            session = (
                SparkSession.builder.master("local[1]")
                .appName("pipeline-readers-test")
                .config("spark.driver.memory", "512m")
                .config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.driver.host", "127.0.0.1")
                .config("spark.ui.enabled", "false")
                .config("spark.sql.shuffle.partitions", "1")
                .config("spark.local.dir", scratch)
                .config("spark.sql.warehouse.dir", f"{scratch}/warehouse")
                .getOrCreate()
            )
            session.sparkContext.setLogLevel("ERROR")
            try:
                yield session
            finally:
                session.stop()

    def _check(self, frame, output) -> None:
        assert all(
            Path(f.removeprefix("file:")).relative_to(output).parts[0] == DATA_DIR for f in frame.inputFiles()
        )
        _exactly_once([row.row_id for row in frame.select("row_id").collect()])

    def test_root_with_recursive_file_lookup(self, spark, output):
        self._check(spark.read.option("recursiveFileLookup", "true").parquet(str(output)), output)

    def test_data_folder(self, spark, output):
        self._check(spark.read.parquet(str(output / DATA_DIR)), output)

    def test_pins_plain_root_finds_no_file(self, spark, output):
        """Pins: ``spark.read.parquet(root)`` reads only files directly in the root, all ``_``-prefixed."""
        from pyspark.errors import AnalysisException

        with pytest.raises(AnalysisException, match="UNABLE_TO_INFER_SCHEMA"):
            spark.read.parquet(str(output))
