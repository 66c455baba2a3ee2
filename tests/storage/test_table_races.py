"""Two runs commit to one table at the same moment: each lands exactly once (Iceberg on SQLite, Lance).

Two writers (two output folders, two run ids, one table) each read the table's state, then both
commit from that same state, the later one's optimistic commit stale by then: the first time on
a table neither has created yet, again once it holds their rows. No Ray: the parts are written
as a run writes them (the output's schema), in local folders; the catalog is a real SQL catalog
on a SQLite file, the Lance dataset a real one.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest

from pipeline.outputs.layout import OutputLocation
from pipeline.outputs.tables import table_commit
from pipeline.outputs.tables import target as tables
from pipeline.outputs.tables.iceberg import IcebergTarget, load_catalog
from pipeline.outputs.tables.lance import LanceTarget, open_dataset
from pipeline.schema import output_schema

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.config import Config

DIM = 8
ROWS = 6  # per run, in two parts


def _write_run(config: Config, run_id: str) -> list[str]:
    """A run's two parts in its output folder, as the job writes them; their paths."""
    location = OutputLocation.open(config.output.uri, config.storage)
    location.prepare()
    schema = output_schema("embed", DIM)
    files = []
    for part in range(2):
        ids = [f"{run_id}-{part}-{row}" for row in range(ROWS // 2)]
        columns: dict[str, pa.Array] = {}
        for field in schema:
            if field.name == "embedding":
                values = pa.array([float(i % 7) for i in range(DIM * len(ids))], pa.float32())
                columns[field.name] = pa.FixedSizeListArray.from_arrays(values, DIM)
            elif field.name in ("row_id", "uri"):
                columns[field.name] = pa.array(ids)
            elif field.name == "run_id":
                columns[field.name] = pa.array([run_id] * len(ids))
            elif field.name == "status":
                columns[field.name] = pa.array(["ok"] * len(ids))
            elif field.nullable:
                columns[field.name] = pa.nulls(len(ids), field.type)
            else:  # model_name, model_sha256: any value of their type
                columns[field.name] = pa.array(["x"] * len(ids), field.type)
        name = f"data/part-{run_id}-{part}.parquet"
        location.write_table(name, pa.table(columns, schema=schema))
        files.append(name)
    return files


def _race(config_of: Any, runs: tuple[str, str], seen: list[Any]) -> list[dict[str, Any]]:
    """Both runs' table commits at once, each from the state both read first; what each commit made."""
    configs = [config_of(run) for run in runs]
    files = [_write_run(config, run) for config, run in zip(configs, runs, strict=True)]

    def commit(index: int) -> dict[str, Any]:
        config = configs[index]
        target = table_commit.target_of(config)
        assert target is not None
        location = OutputLocation.open(config.output.uri, config.storage)
        return table_commit.commit_run(target, location, files[index], runs[index], "hash")

    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(commit, range(2)))
    assert len(seen) >= 4  # each writer read the table, for its history and for its commit, in step
    return made


@pytest.fixture
def race_config(local_config: Any, tmp_path: Path) -> Any:
    """A config per format and run: its own output folder, one table in one catalog for all."""

    def build(fmt: str, run: str) -> Config:
        table = "nightly.race" if fmt == "iceberg" else str(tmp_path / "race.lance")
        return local_config(
            tmp_path / "in",
            tmp_path / f"out-{run}",
            model__task="embed",
            output__format=fmt,
            output__table=table,
            **{
                "output.catalog.uri": f"sqlite:///{tmp_path}/catalog.sqlite",
                "output.catalog.warehouse": (tmp_path / "warehouse").as_uri(),
            },
        )

    return build


def _in_step(monkeypatch: pytest.MonkeyPatch, cls: Any, method: str, state: Any, seen: list[Any]) -> None:
    """Each read of the table by either writer waits for the other's: both commit from one state."""
    read = getattr(cls, method)
    both = threading.Barrier(2, timeout=30)

    def in_step(self: Any) -> Any:
        found = read(self)
        seen.append(None if found is None else state(found))
        both.wait()
        return found

    monkeypatch.setattr(cls, method, in_step)


def test_two_iceberg_writers_each_commit_once(
    race_config: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Racing Iceberg commits (creating the table, then appending) each land once: the stale one retries."""
    seen: list[Any] = []
    _in_step(monkeypatch, IcebergTarget, "_table", lambda table: table.metadata_location, seen)
    made = _race(lambda run: race_config("iceberg", run), ("20261201-a", "20261201-b"), seen)
    seen.clear()
    made += _race(lambda run: race_config("iceberg", run), ("20261202-c", "20261202-d"), seen)
    # Both writers of the second race read the table at one metadata version before either committed.
    assert len(set(seen[-2:])) == 1
    out, err = capfd.readouterr()
    assert "table commit lost to another writer's; refreshed, retrying" in out + err  # the job's own retry
    config = race_config("iceberg", "any")
    table = load_catalog(config.output.catalog, config.storage).load_table("nightly.race")
    runs = [str(snapshot.summary[tables.RUN_ID_PROPERTY]) for snapshot in table.metadata.snapshots]
    assert sorted(runs) == ["20261201-a", "20261201-b", "20261202-c", "20261202-d"]
    assert sorted(entry["commit"] for entry in made) == sorted(
        s.snapshot_id for s in table.metadata.snapshots
    )
    rows = table.scan().to_arrow()
    assert rows.num_rows == 4 * ROWS
    assert len(set(rows.column("row_id").to_pylist())) == 4 * ROWS
    assert [field.name for field in table.spec().fields] == ["run_date"]


def test_two_lance_writers_each_commit_once(race_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Racing Lance commits (creating the dataset, then appending) each land once, no row lost or doubled."""
    seen: list[Any] = []
    _in_step(monkeypatch, LanceTarget, "_dataset", lambda dataset: dataset.version, seen)
    made = _race(lambda run: race_config("lance", run), ("20261201-a", "20261201-b"), seen)
    seen.clear()
    made += _race(lambda run: race_config("lance", run), ("20261202-c", "20261202-d"), seen)
    assert len(set(seen[-2:])) == 1  # both appended from one version
    config = race_config("lance", "any")
    dataset = open_dataset(str(config.output.table), config.storage)
    runs = {}
    for version in dataset.versions():
        properties = dataset.read_transaction(version["version"]).transaction_properties or {}
        if tables.RUN_ID_PROPERTY in properties:
            runs[properties[tables.RUN_ID_PROPERTY]] = version["version"]
    assert sorted(runs) == ["20261201-a", "20261201-b", "20261202-c", "20261202-d"]
    assert sorted(entry["commit"] for entry in made) == sorted(runs.values())
    rows = dataset.to_table(columns=["row_id", "run_id"])
    assert rows.num_rows == 4 * ROWS
    assert len(set(rows.column("row_id").to_pylist())) == 4 * ROWS
