"""Images inside shards (Parquet, WebDataset): the same rows as the same images run as loose files.

The runs are real ``run_job`` calls on the shared local Ray cluster, over 1,000 generated
images and the 3 broken files, packed into 3 shards of each format, and small crops so
that the model costs little.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import sample_shards, samples
from pipeline.config import InputConfig, StorageConfig, load_config
from pipeline.errors import ConfigError, InputError
from pipeline.inputs import row_ids
from pipeline.inputs.listing import list_inputs
from pipeline.outputs.layout import DATA_DIR, MANIFEST
from pipeline.outputs.shard_ledger import LEDGER_DIR
from pipeline.run.job import run_job

RECORDS = 1000
SMALL = {"preprocess__resize_size": 40, "preprocess__crop_size": 32, "inference__batch_size": 32}
COMPARED = ["status", "reason", "label", "top_k_ids"]


@pytest.fixture(scope="session")
def many_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """1,000 small images and the 3 broken files, as files; their paths in listing order."""
    root = tmp_path_factory.mktemp("many-small")
    files = samples.make_images(root, RECORDS, seed=3, sizes=((64, 48), (48, 64), (80, 60)), png_every=7)
    return root, sorted(files)


@pytest.fixture(scope="session")
def loose_run(many_small, weights_file, tmp_path_factory) -> dict[str, dict]:
    """The run over the files themselves: each row by row id."""
    root, _ = many_small
    out = tmp_path_factory.mktemp("loose") / "out"
    config = _config(root, out, weights_file)
    run_job(config)
    return _rows(out)


def _config(input_uri: Path | str, out: Path, weights: Path, *extra: str, **overrides: object):
    items = {
        "input.uri": str(input_uri),
        "output.uri": str(out),
        "model.name": "resnet18",
        "model.weights": str(weights),
        "inference.precision": "fp32",
        "logging.progress": "off",
        **{key.replace("__", "."): value for key, value in {**SMALL, **overrides}.items()},
    }
    return load_config(None, [*(f"{k}={v}" for k, v in items.items()), *extra], environ={})


def _rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(out / DATA_DIR)
    ids = table.column("row_id").to_pylist()
    assert len(ids) == len(set(ids))
    return {row["row_id"]: row for row in table.to_pylist()}


def _assert_same_predictions(rows: dict, reference: dict) -> None:
    for row_id, row in rows.items():
        wanted = reference[row_id]
        assert {key: row[key] for key in COMPARED} == {key: wanted[key] for key in COMPARED}, row["uri"]
        if row["score"] is not None:
            assert row["score"] == pytest.approx(wanted["score"], abs=1e-4)


@pytest.mark.slow
class TestEqualToLooseFiles:
    def test_parquet_shards_with_keys_give_the_files_rows(
        self, ray_session, many_small, loose_run, weights_file, tmp_path
    ):
        """Keys equal to the files' URIs: the same row ids, the same predictions, every record once."""
        _, files = many_small
        sample_shards.parquet_shards(files, tmp_path / "shards", 3, row_group_rows=150)
        out = tmp_path / "out"
        config = _config(
            tmp_path / "shards",
            out,
            weights_file,
            "input.key_column=key",
            "input.passthrough_columns=[name, size_bytes]",
            input__format="parquet",
        )
        summary = run_job(config)
        assert (summary.inputs, summary.succeeded, summary.failed) == (len(files), RECORDS, 3)
        rows = _rows(out)
        assert set(rows) == set(loose_run)
        _assert_same_predictions(rows, loose_run)
        names = {row_ids.row_id(str(path)): (path.name, path.stat().st_size) for path in files}
        assert {rid: (row["name"], row["size_bytes"]) for rid, row in rows.items()} == names
        shard_prints = {
            f"{path.stat().st_size}:{path.stat().st_mtime}" for path in (tmp_path / "shards").iterdir()
        }
        assert {row["fingerprint"] for row in rows.values()} == shard_prints  # each record: its shard's
        committed = json.loads((out / MANIFEST).read_text())
        assert committed["input_format"] == "parquet"
        assert committed["failed_shards"] == []
        assert committed["counts"]["inputs"] == len(files)

    def test_parquet_shards_without_keys_are_found_by_shard_and_row(
        self, ray_session, many_small, loose_run, weights_file, tmp_path
    ):
        """No key column: ids from ``<shard>#<row>`` (auto-detected format); predictions as for the files."""
        _, files = many_small
        shards = sample_shards.parquet_shards(files, tmp_path / "shards", 3, row_group_rows=150)
        out = tmp_path / "out"
        summary = run_job(_config(tmp_path / "shards", out, weights_file))
        assert summary.inputs == len(files)
        table = pq.read_table(out / DATA_DIR)
        by_key = {}
        for index, shard in enumerate(shards):
            keys = pq.read_table(shard, columns=["key"]).column("key").to_pylist()
            by_key.update(
                {row_ids.row_id(f"{shard.name}#{row}"): (index, key) for row, key in enumerate(keys)}
            )
        assert sorted(table.column("row_id").to_pylist()) == sorted(by_key)
        rows = {row_ids.row_id(by_key[row["row_id"]][1]): row for row in table.to_pylist()}
        _assert_same_predictions(rows, loose_run)
        assert {row["shard_index"] for row in table.to_pylist()} == {0, 1, 2}

    def test_webdataset_shards_give_the_files_predictions(
        self, ray_session, many_small, loose_run, weights_file, tmp_path
    ):
        """Tars of the same files: one row per record, ``<shard>#<key>`` ids, text members carried."""
        _, files = many_small
        shards = sample_shards.webdataset_shards(files, tmp_path / "tars", 3)
        out = tmp_path / "out"
        summary = run_job(
            _config(
                tmp_path / "tars",
                out,
                weights_file,
                "input.passthrough_columns=[json, cls]",
                input__format="webdataset",
            )
        )
        assert (summary.inputs, summary.succeeded, summary.failed) == (len(files), RECORDS, 3)
        table = pq.read_table(out / DATA_DIR)
        assert table.schema.field("json").type == pa.string()
        by_locator = {}
        size = -(-len(files) // 3)
        for number, path in enumerate(files):
            shard = shards[number // size]
            key = sample_shards.webdataset_key(path)
            by_locator[f"{shard}#{key}"] = (row_ids.row_id(f"{shard.name}#{key}"), str(path))
        rows = table.to_pylist()
        assert sorted(row["uri"] for row in rows) == sorted(by_locator)
        assert all(row["row_id"] == by_locator[row["uri"]][0] for row in rows)
        assert all(json.loads(row["json"])["file"] == Path(by_locator[row["uri"]][1]).name for row in rows)
        _assert_same_predictions({row_ids.row_id(by_locator[row["uri"]][1]): row for row in rows}, loose_run)


@pytest.mark.slow
def test_resume_rereads_only_the_shards_not_written(ray_session, many_small, weights_file, tmp_path):
    """A run cut short: wholly written shards are not read again; a partial one is, written rows skipped."""
    _, files = many_small
    sample_shards.parquet_shards(files[:300], tmp_path / "shards", 3, row_group_rows=50)
    out = tmp_path / "out"
    # Batches of 10 rows: each part holds rows of one shard only.
    small = {"output__rows_per_file": 10, "preprocess__batch_size": 10, "inference__batch_size": 10}
    config = _config(tmp_path / "shards", out, weights_file, input__format="parquet", **small)
    first = run_job(config)
    table = pq.read_table(out / DATA_DIR)
    # Make it the output of an attempt killed mid-run: no commit, shard 1's read not recorded
    # as finished (its rows all written), and most of shard 2's rows not written.
    (out / MANIFEST).unlink()
    (out / f"{LEDGER_DIR}/000001.json").unlink()
    lost = _cut_part_of_shard(out, shard=2, keep=40)
    assert lost
    ledger_0 = (out / f"{LEDGER_DIR}/000000.json").stat().st_mtime_ns
    second = run_job(
        config.model_copy(update={"job": config.job.model_copy(update={"run_id": first.run_id})})
    )
    assert second.resumed is True
    assert second.processed_this_run == lost  # shards 1 and 2 read again, written rows filtered out
    assert (out / f"{LEDGER_DIR}/000000.json").stat().st_mtime_ns == ledger_0  # shard 0 not read again
    again = pq.read_table(out / DATA_DIR)
    assert sorted(again.column("row_id").to_pylist()) == sorted(table.column("row_id").to_pylist())
    assert json.loads((out / MANIFEST).read_text())["counts"]["inputs"] == 300


def _cut_part_of_shard(out: Path, shard: int, keep: int) -> int:
    """Rewrite the part holding ``shard``'s rows with its first ``keep`` rows only; the rows lost."""
    for part in sorted((out / DATA_DIR).glob("*.parquet")):
        table = pq.read_table(part)
        if set(table.column("shard_index").to_pylist()) == {shard}:
            pq.write_table(table.slice(0, keep), part)
            return table.num_rows - keep
    return 0


def test_plan_counts_the_records_of_parquet_shards(ray_session, sample_images, tmp_path, capsys):
    """``pipeline plan`` over shards: records from the footers, not shards, as the inputs found."""
    from pipeline.cli import main

    files = sorted(path for path in sample_images.rglob("*") if path.is_file())
    sample_shards.parquet_shards(files, tmp_path / "shards", 3)
    assert (
        main(
            ["plan", "--set", f"input.uri={tmp_path / 'shards'}", "--set", "model.random_init=true", "--json"]
        )
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert (document["inputs_found"], document["input_format"]) == (len(files), "parquet")


class TestFormatDetection:
    def test_a_folder_of_one_kind_is_read_as_that_kind(self, tmp_path):
        for kind, name in (("parquet", "a.parquet"), ("webdataset", "a.tar"), ("files", "a.jpg")):
            folder = tmp_path / kind
            folder.mkdir()
            (folder / name).write_bytes(b"x")
            (folder / "README").write_bytes(b"x")
            listing = list_inputs(InputConfig(uri=str(folder)), StorageConfig())
            assert (listing.format, [Path(uri).name for uri in listing.uris]) == (kind, [name])

    def test_a_folder_of_two_kinds_is_refused_naming_the_key(self, tmp_path):
        for name in ("a.parquet", "b.jpg"):
            (tmp_path / name).write_bytes(b"x")
        with pytest.raises(InputError, match=r"files and parquet alike; set input\.format"):
            list_inputs(InputConfig(uri=str(tmp_path)), StorageConfig())
        listing = list_inputs(InputConfig(uri=str(tmp_path), format="parquet"), StorageConfig())
        assert [Path(uri).name for uri in listing.uris] == ["a.parquet"]

    def test_one_parquet_file_is_a_manifest_unless_the_format_says_shard(self, tmp_path):
        path = tmp_path / "m.parquet"
        pq.write_table(pa.table({"uri": ["x.jpg"]}), path)
        assert InputConfig(uri=str(path)).is_manifest
        listing = list_inputs(InputConfig(uri=str(path), format="parquet"), StorageConfig())
        assert (listing.format, listing.uris) == ("parquet", [str(path)])

    def test_the_image_column_cannot_be_carried(self, tmp_path):
        keys = [f"input.uri={tmp_path}", "model.random_init=true", "input.format=parquet"]
        with pytest.raises(ConfigError, match=r"input\.image_column"):
            load_config(
                None, [*keys, "input.image_column=photo", "input.passthrough_columns=[photo]"], environ={}
            )
        with pytest.raises(ConfigError, match=r"the output has a column 'shard_index' already"):
            load_config(None, [*keys, "input.passthrough_columns=[shard_index]"], environ={})


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "carried"), [("parquet", "name"), ("webdataset", "json")])
def test_demo_makes_and_runs_a_sample_of_each_format(kind, carried, ray_session, tmp_path, capsys):
    """``pipeline demo --format``: the sample packed into 3 shards, run, committed, a column carried."""
    from pipeline.cli import main

    assert main(["demo", "--images", "12", "--workdir", str(tmp_path), "--format", kind]) == 0
    out = tmp_path / f"predictions-{kind}"
    committed = json.loads((out / MANIFEST).read_text())
    assert (committed["input_format"], committed["counts"]["inputs"]) == (kind, 15)
    assert len(list((tmp_path / kind).iterdir())) == 3
    assert pq.read_table(out / DATA_DIR).column(carried).null_count == 0
    assert "succeeded" in capsys.readouterr().out
