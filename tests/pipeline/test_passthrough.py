"""Carried manifest columns (``input.passthrough_columns``): refused early when wrong, else in every row.

The runs are real ``run_job`` calls on the shared local Ray cluster, over manifests of the
session's sample images (40 good, 3 broken: the broken ones give failed rows).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import RESERVED_COLUMNS, InputConfig, StorageConfig, load_config
from pipeline.errors import ConfigError, InputError, ResumeRefusedError
from pipeline.inputs.listing import list_inputs
from pipeline.outputs.layout import DATA_DIR, FAILURES, MANIFEST, RUN_STATE, OutputLocation
from pipeline.review.compare import compare_outputs
from pipeline.review.inspection import inspect_output
from pipeline.run.job import run_job
from pipeline.schema import reserved_columns

CARRIED = ["item_id", "title", "taken_at", "weight", "tags", "meta", "price"]


def typed_manifest(images: Path, path: Path) -> pa.Table:
    """A Parquet manifest of every sample file, with typed columns and nulls; written to ``path``."""
    uris = sorted(str(p) for p in images.rglob("*") if p.is_file())
    n = len(uris)
    table = pa.table(
        {
            "uri": uris,
            "item_id": pa.array([2**60 + i if i % 5 else None for i in range(n)], pa.int64()),
            "title": pa.array([None if i % 7 == 0 else f"item {i}" for i in range(n)], pa.string()),
            "taken_at": pa.array(
                [
                    None if i % 4 == 0 else dt.datetime(2026, 1, 1, 12, i % 60, tzinfo=dt.UTC)
                    for i in range(n)
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "weight": pa.array([None if i % 3 == 0 else i / 3 for i in range(n)], pa.float64()),
            "tags": pa.array(
                [None if i % 6 == 0 else [f"t{i}", "x"][: i % 3] for i in range(n)], pa.list_(pa.string())
            ),
            "meta": pa.array(
                [None if i % 8 == 0 else {"source": f"cam{i % 2}", "rank": i} for i in range(n)],
                pa.struct([("source", pa.string()), ("rank", pa.int32())]),
            ),
            "price": pa.array(
                [None if i % 9 == 0 else decimal.Decimal(f"{i}.25") for i in range(n)], pa.decimal128(9, 2)
            ),
            "ignored": pa.array(range(n), pa.int16()),  # not carried: must not appear
        }
    )
    pq.write_table(table, path)
    return pq.read_table(path)  # as the job reads it (Parquet names a list's item "element")


def output_table(config) -> pa.Table:
    return pq.read_table(Path(config.output.uri) / DATA_DIR)


def assert_carried(out: pa.Table, manifest: pa.Table, names: list[str], expected_types: pa.Schema) -> None:
    """Every output row holds its manifest row's values of ``names``, with ``expected_types``."""
    assert out.column_names[-len(names) :] == names
    for name in names:
        assert out.schema.field(name).type == expected_types.field(name).type, name
    assert "ignored" not in out.column_names
    by_uri = {row["uri"]: row for row in manifest.to_pylist()}
    rows = out.to_pylist()
    assert len(rows) == manifest.num_rows
    for row in rows:
        wanted = by_uri[row["uri"]]
        assert {name: row[name] for name in names} == {name: wanted[name] for name in names}, row["uri"]


@pytest.mark.slow
class TestCarriedColumns:
    def test_parquet_columns_arrive_with_their_types_on_every_row_and_on_a_resume(
        self, ray_session, sample_images, make_config, tmp_path
    ):
        """int64 past 2**53, string, timestamp, float, list, struct, decimal and nulls arrive as written.

        Then, on the same run made unfinished: an attempt finishing the rows an earlier one left
        writes them with the same columns and values.
        """
        manifest = typed_manifest(sample_images, tmp_path / "manifest.parquet")
        config = make_config(
            tmp_path / "manifest.parquet",
            input__passthrough_columns=json.dumps(CARRIED),
            output__rows_per_file=10,
            preprocess__batch_size=8,  # several blocks, so several parts and checkpoints
        )
        summary = first = run_job(config)
        assert (summary.succeeded, summary.failed) == (40, 3)
        out = output_table(config)
        assert_carried(out, manifest, CARRIED, manifest.schema)
        failed = out.filter(pa.compute.equal(out.column("status"), "failed"))
        assert failed.num_rows == 3
        assert failed.column("item_id").null_count < 3  # the failed rows carry their values too
        dead_letter = pq.read_table(Path(config.output.uri) / FAILURES)
        assert_carried(
            dead_letter,
            manifest.filter(pa.compute.is_in(manifest["uri"], failed["uri"])),
            CARRIED,
            manifest.schema,
        )
        committed = OutputLocation.open(config.output.uri, config.storage).read_json(MANIFEST)
        assert committed["passthrough_columns"] == [
            {"name": name, "type": str(manifest.schema.field(name).type)} for name in CARRIED
        ]
        parts = list((Path(config.output.uri) / DATA_DIR).glob("*.parquet"))
        assert len(parts) > 1
        assert {str(pq.read_schema(part)) for part in parts} == {str(out.schema)}
        inspected = inspect_output(config.output.uri, config.storage)
        assert (inspected["counts"]["rows"], inspected["consistent_with_manifest"]) == (43, True)
        compared = compare_outputs(config.output.uri, config.output.uri, config.storage)
        assert (compared["rows"]["in_both"], compared["top1_agreement"]) == (43, 1.0)

        root = Path(config.output.uri)
        (root / MANIFEST).unlink()  # as if the run had stopped before its commit...
        checkpoints = sorted((root / "_checkpoint").rglob("*.parquet"))
        assert len(checkpoints) > 1
        lost = checkpoints[0]  # ... and before this part's checkpoint was committed
        base = lost.name.removesuffix(".parquet")
        lost_rows = pq.read_table(lost).num_rows
        lost.unlink()
        second = run_job(config)
        assert second.run_id == first.run_id
        assert 0 < second.processed_this_run == lost_rows < 43
        assert not any(part.name.startswith(f"{base}-") for part in (root / DATA_DIR).iterdir())
        assert_carried(output_table(config), manifest, CARRIED, manifest.schema)

    def test_csv_columns_arrive_as_their_text(self, ray_session, sample_images, make_config, tmp_path):
        """A CSV manifest's columns arrive as the text written (zero-padded codes kept); empty cells null."""
        uris = sorted(str(p) for p in sample_images.rglob("*") if p.is_file())
        lines = ["uri,key,zip,seen,score_ext,flag,note,blank"]
        for i, uri in enumerate(uris):
            seen = "" if i % 4 == 0 else f"2026-01-0{1 + i % 9}T10:00:00"
            lines.append(f"{uri},{'' if i % 5 == 0 else i},{i:05d},{seen},{i / 4},{i % 2 == 0},note {i},")
        path = tmp_path / "manifest.csv"
        path.write_text("\n".join(lines) + "\n")
        names = ["key", "zip", "seen", "score_ext", "flag", "note", "blank"]
        config = make_config(path, input__passthrough_columns=json.dumps(names), model__task="embed")
        run_job(config)  # embed: the carried columns follow the embedding as they follow the top-k
        text = pyarrow.csv.ConvertOptions(
            column_types=dict.fromkeys(["uri", *names], pa.string()), strings_can_be_null=True
        )
        written = pyarrow.csv.read_csv(path, convert_options=text)
        expected = pa.schema([(name, pa.string()) for name in names])
        out = output_table(config)
        assert_carried(out, written, names, expected)
        zips = {row["uri"]: row["zip"] for row in out.to_pylist()}
        assert zips[uris[7]] == "00007"  # not the number 7
        assert out.filter(pa.compute.is_null(out.column("key"))).num_rows == len(range(0, len(uris), 5))
        assert out.column_names[: -len(names)][-5:] == [
            *("embedding", "model_name", "model_sha256", "run_id", "fingerprint")
        ]

    def test_a_batch_of_nulls_keeps_the_manifests_types(self, ray_session, sample_images, tmp_path):
        """The inference actor's output schema is fixed: rows whose carried values are all null (and
        failed) give the same column types as rows with values, so every part has one schema."""
        import numpy as np
        import ray

        from pipeline.compute.inference import InferenceSettings
        from pipeline.compute.inference_actor import ActorSettings, ClassifyOrEmbed
        from pipeline.compute.model import ModelSpec, Preprocessing
        from pipeline.ops.metrics import RunLabels
        from pipeline.schema import CARRIED_INDEX_COLUMN

        manifest = typed_manifest(sample_images, tmp_path / "m.parquet").select(CARRIED)
        nulls = pa.table({name: pa.nulls(2, manifest.schema.field(name).type) for name in CARRIED})
        carried = pa.concat_tables([manifest.slice(1, 2), nulls])
        prep = Preprocessing(72, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
        spec = ModelSpec("resnet18", 10, None, "random-init", True, tuple(map(str, range(10))), prep)  # noqa: FBT003
        settings = InferenceSettings(device="cpu", precision="fp32", batch_size=2)
        actor = ActorSettings(settings, 1, RunLabels("p", "r"))
        classify = ClassifyOrEmbed(spec, None, actor, carried_ref=ray.put(carried))

        def failed_rows(indices: list[int]) -> pa.Table:
            count = len(indices)
            return classify(
                {
                    "row_id": np.array([f"r{i}" for i in indices], dtype=object),
                    "uri": np.array([f"{i}.jpg" for i in indices], dtype=object),
                    "image": np.zeros((count, 64, 64, 3), np.uint8),
                    "status": np.array(["failed"] * count, dtype=object),
                    "reason": np.array(["not_found"] * count, dtype=object),
                    "error": np.array(["gone"] * count, dtype=object),
                    CARRIED_INDEX_COLUMN: np.array(indices, np.int64),
                }
            )

        with_values, all_null = failed_rows([1, 0]), failed_rows([2, 3])
        assert with_values.schema == all_null.schema
        assert with_values.select(CARRIED).to_pylist() == carried.take([1, 0]).to_pylist()
        assert all(value is None for row in all_null.select(CARRIED).to_pylist() for value in row.values())
        assert all_null.select(CARRIED).schema == manifest.schema


class TestRefusals:
    def test_reserved_names_are_the_schema_modules(self):
        """The config's list of names a carried column may not take is the output schema's, both tasks."""
        assert reserved_columns() == RESERVED_COLUMNS

    @pytest.mark.parametrize("name", ["label", "embedding", "row_id", "status", "run_id", "uri"])
    def test_collision_exits_2_naming_key_and_value(self, name, sample_images, weights_file, tmp_path, capfd):
        """A carried name that is an output column (either task's or bookkeeping) stops the run: exit 2."""
        typed_manifest(sample_images, tmp_path / "m.parquet")
        config = tmp_path / "job.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "input": {"uri": str(tmp_path / "m.parquet"), "passthrough_columns": ["item_id", name]},
                    "model": {"name": "resnet18", "weights": str(weights_file)},
                    "output": {"uri": str(tmp_path / "out")},
                }
            )
        )
        assert main(["run", "--config", str(config)]) == 2
        last = capfd.readouterr().err.strip().splitlines()[-1]
        assert f"config key 'input.passthrough_columns': got '{name}'" in last
        assert not (tmp_path / "out").exists()

    def test_listing_without_a_manifest_is_refused(self, sample_images):
        """A folder listing has no columns to carry."""
        with pytest.raises(ConfigError, match=r"needs a \.parquet or \.csv manifest"):
            load_config(
                None,
                [f"input.uri={sample_images}", "input.passthrough_columns=[title]", "model.random_init=true"],
                environ={},
            )

    def test_the_uri_column_itself_is_refused(self, tmp_path):
        """The manifest's URI column is written as ``uri`` (signatures masked), never raw."""
        with pytest.raises(ConfigError, match=r"input\.manifest_column"):
            load_config(
                None,
                [
                    f"input.uri={tmp_path / 'm.csv'}",
                    "input.manifest_column=url",
                    "input.passthrough_columns=[url]",
                    "model.random_init=true",
                ],
                environ={},
            )

    def test_missing_column_is_refused_at_listing_naming_the_columns(self, sample_images, tmp_path):
        """A name the manifest lacks fails the listing, with the manifest's columns listed."""
        typed_manifest(sample_images, tmp_path / "m.parquet")
        source = InputConfig(uri=str(tmp_path / "m.parquet"), passthrough_columns=["title", "colour"])
        with pytest.raises(InputError) as caught:
            list_inputs(source, StorageConfig())
        assert "no column 'colour'" in str(caught.value)
        assert "(columns: uri, item_id, title, taken_at" in str(caught.value)

    def test_listing_drops_blank_uris_and_applies_the_limit_row_for_row(self, tmp_path):
        """Carried rows stay aligned with the URIs when blank cells are skipped and input.limit cuts."""
        path = tmp_path / "m.parquet"
        pq.write_table(pa.table({"uri": ["a.jpg", None, " ", "b.jpg", "c.jpg"], "k": [1, 2, 3, 4, 5]}), path)
        listing = list_inputs(InputConfig(uri=str(path), passthrough_columns=["k"], limit=2), StorageConfig())
        assert (listing.uris, listing.empty_cells) == (["a.jpg", "b.jpg"], 2)
        assert listing.carried is not None
        assert listing.carried.column("k").to_pylist() == [1, 4]

    def test_a_csv_manifests_columns_keep_their_text(self, tmp_path):
        """CSV has no types: carried columns are the text as written (000999 stays 000999, not 999);
        an empty cell is null, a quoted empty one an empty string."""
        path = tmp_path / "m.csv"
        path.write_text('uri,zip,key,note\na.jpg,000999,7,\nb.jpg,01234,,""\n')
        listing = list_inputs(
            InputConfig(uri=str(path), passthrough_columns=["zip", "key", "note"]), StorageConfig()
        )
        assert listing.carried is not None
        assert listing.carried.schema == pa.schema(
            [("zip", pa.string()), ("key", pa.string()), ("note", pa.string())]
        )
        assert listing.carried.to_pylist() == [
            {"zip": "000999", "key": "7", "note": None},
            {"zip": "01234", "key": None, "note": ""},
        ]

    def test_carried_columns_are_part_of_the_config_hash(self, tmp_path):
        """Other carried columns are another run (its parts' schema differs); none: the hash of old
        (test_config's pinned classification hash covers that)."""
        keys = [f"input.uri={tmp_path / 'm.parquet'}", "model.random_init=true"]
        hashes = {
            load_config(None, [*keys, *extra], environ={}).config_hash()
            for extra in ([], ["input.passthrough_columns=[k]"], ["input.passthrough_columns=[k, j]"])
        }
        assert len(hashes) == 3


@pytest.mark.slow
class TestResumeRefusals:
    def test_other_columns_or_types_cannot_resume(self, ray_session, sample_images, make_config, tmp_path):
        """A resume carrying other columns, or the same ones with another type, is refused before work."""
        path = tmp_path / "manifest.parquet"
        manifest = typed_manifest(sample_images, path)
        config = make_config(path, input__passthrough_columns='["item_id", "title"]', input__limit=4)
        run_job(config)
        out = Path(config.output.uri)
        (out / MANIFEST).unlink()
        state = json.loads((out / RUN_STATE).read_text())
        assert state["passthrough_columns"] == [
            {"name": "item_id", "type": "int64"},
            {"name": "title", "type": "string"},
        ]
        other = make_config(path, input__passthrough_columns='["item_id"]', input__limit=4)
        with pytest.raises(ResumeRefusedError, match=r"carry the manifest columns \['item_id', 'title'\]"):
            run_job(other)
        pq.write_table(manifest.set_column(1, "item_id", manifest["item_id"].cast(pa.string())), path)
        with pytest.raises(InputError, match="item_id int64 -> string"):
            run_job(config)
