"""Incremental runs (``output.previous``) without Ray: fingerprints of local files, refusals before any work.

The runs themselves (carried rows equal to a full recompute, a kill and resume) are in
tests/storage/test_s3_incremental.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.inputs import fingerprints, row_ids
from pipeline.inputs.listing import list_inputs
from pipeline.outputs.previous import find_previous
from pipeline.run.job import run_job

HAND_MADE_HASH = "cd" * 32  # the config hash conftest.write_committed puts in _SUCCESS


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Three small files with image names (never decoded: nothing here reaches Ray)."""
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (root / name).write_bytes(name.encode() * 10)
    return root


def _prints(listing: Any) -> dict[str, str | None]:
    """Each listed URI's fingerprint, as its output row would store it."""
    return dict(zip(listing.uris, fingerprints.of_inputs(listing, listing.uris), strict=True))


def _previous(folder: Path, listing: Any, config: Any) -> Any:
    """The hand-made output at ``folder`` as a previous output of ``listing`` (its _inputs.parquet added)."""
    import json

    import pyarrow.parquet as pq

    from pipeline.outputs.layout import INPUTS, OutputLocation
    from pipeline.outputs.previous import Previous

    pq.write_table(fingerprints.inputs_table(listing), folder / INPUTS)
    manifest = json.loads((folder / "_SUCCESS").read_text())
    return Previous(OutputLocation.open(str(folder), config.storage), manifest)


class TestFingerprints:
    def test_local_files_unchanged_by_size_and_mtime(
        self, images: Path, local_config: Any, tmp_path: Path
    ) -> None:
        """A file keeps its fingerprint while its size and mtime do; rewritten, touched, renamed: not."""
        config = local_config(images, tmp_path / "out")
        before = _prints(list_inputs(config.input, config.storage))
        (images / "a.jpg").write_bytes(b"other bytes, other size")
        later = (images / "b.jpg").stat().st_mtime + 5
        os.utime(images / "b.jpg", (later, later))  # same bytes, touched: computed again
        (images / "c.jpg").rename(images / "c2.jpg")
        (images / "d.jpg").write_bytes(b"new")
        now = _prints(list_inputs(config.input, config.storage))
        assert [uri for uri, value in now.items() if before.get(uri) == value] == []
        (images / "c2.jpg").rename(images / "c.jpg")
        now = _prints(list_inputs(config.input, config.storage))
        assert [uri for uri, value in now.items() if before.get(uri) == value] == [str(images / "c.jpg")]

    def test_manifest_entries_have_no_fingerprint(
        self, images: Path, local_config: Any, tmp_path: Path
    ) -> None:
        """A manifest's entries carry no fingerprint (a null in their rows): every one is computed again."""
        manifest = tmp_path / "list.csv"
        manifest.write_text("uri\n" + "\n".join(str(p) for p in sorted(images.iterdir())) + "\n")
        config = local_config(manifest, tmp_path / "out")
        listing = list_inputs(config.input, config.storage)
        assert len(listing) == 3
        assert set(_prints(listing).values()) == {None}

    def test_manifest_version_column_is_the_fingerprint(
        self, images: Path, local_config: Any, write_output: Any, tmp_path: Path
    ) -> None:
        """With input.version_column an unchanged version is carried; a new one or a blank cell is not."""
        from pipeline.outputs import carry
        from pipeline.outputs.layout import OutputLocation

        paths = sorted(str(path) for path in images.iterdir())
        manifest = tmp_path / "list.csv"
        manifest.write_text(f"uri,v\n{paths[0]},1\n{paths[1]},1\n{paths[2]},\n")
        config = local_config(manifest, tmp_path / "night-2", input__version_column="v")
        listing = list_inputs(config.input, config.storage)
        assert listing.carried is None  # the version column is read, not written
        prints = _prints(listing)
        assert list(prints.values()) == ["version:1", "version:1", None]
        rows = [
            {"row_id": row_ids.row_id(uri), "uri": uri, "status": "ok", "fingerprint": prints[uri]}
            for uri in paths
        ]
        previous = _previous(write_output(tmp_path / "night-1", rows, parts=1), listing, config)
        manifest.write_text(f"uri,v\n{paths[0]},1\n{paths[1]},2\n{paths[2]},\n")
        listing = list_inputs(config.input, config.storage)
        out = OutputLocation.open(config.output.uri, config.storage)
        todo, counts = carry.carry_forward(out, previous, listing, listing.uris, keep_failed=False)
        assert (todo, counts.carried) == (paths[1:], 1)
        with pytest.raises(ConfigError, match=r"needs a \.parquet or \.csv manifest") as refused:
            local_config(images, tmp_path / "out", input__version_column="v")
        assert refused.value.key == "input.version_column"


class TestRefusals:
    def test_previous_not_committed_is_refused(
        self, images: Path, local_config: Any, write_output: Any, tmp_path: Path
    ) -> None:
        """A previous output with parts but no _SUCCESS is refused (exit 2) before anything is written."""
        previous = write_output(
            tmp_path / "night-1", [{"row_id": "x", "status": "ok"}], parts=1, commit=False
        )
        config = local_config(images, tmp_path / "night-2", output__previous=str(previous))
        with pytest.raises(ConfigError, match="not committed") as refused:
            run_job(config)
        assert refused.value.key == "output.previous"
        assert refused.value.exit_code == 2
        assert not (tmp_path / "night-2" / "_inputs.parquet").exists()

    def test_missing_previous_fails_or_runs_in_full(
        self, images: Path, local_config: Any, tmp_path: Path
    ) -> None:
        """Nothing at output.previous fails by default; previous_missing=full_run runs in full, saying so."""
        missing = str(tmp_path / "no-such-night")
        with pytest.raises(ConfigError, match="nothing is there"):
            run_job(local_config(images, tmp_path / "night-2", output__previous=missing))
        config = local_config(
            images, tmp_path / "night-2", output__previous=missing, output__previous_missing="full_run"
        )
        previous, why = find_previous(config, "any hash")
        assert previous is None
        assert why is not None
        assert "every input is computed" in why

    def test_other_config_is_refused_or_recomputed(
        self, images: Path, local_config: Any, write_output: Any, tmp_path: Path
    ) -> None:
        """Another config hash is refused (a full run is needed), or accepted and every input recomputed."""
        previous = write_output(tmp_path / "night-1", [{"row_id": "x", "status": "ok"}], parts=1)
        config = local_config(images, tmp_path / "night-2", output__previous=str(previous))
        with pytest.raises(ConfigError, match="a full run is needed"):
            run_job(config)
        assert not (tmp_path / "night-2" / "_inputs.parquet").exists()
        assert find_previous(config, HAND_MADE_HASH)[0] is not None  # the same hash: built on
        accepting = local_config(
            images,
            tmp_path / "night-2",
            output__previous=str(previous),
            output__previous_other_config="recompute",
        )
        found, why = find_previous(accepting, "another hash")
        assert found is None
        assert why is not None
        assert "every input is computed, nothing carried" in why

    def test_random_weights_are_never_carried(
        self, images: Path, local_config: Any, write_output: Any, tmp_path: Path
    ) -> None:
        """A random-init run neither carries rows nor gives them: two random models share one weights hash."""
        import json

        previous = write_output(tmp_path / "night-1", [{"row_id": "x", "status": "ok"}], parts=1)
        random_run = local_config(
            images,
            tmp_path / "night-2",
            output__previous=str(previous),
            model__weights=None,
            model__random_init=True,
        )
        with pytest.raises(ConfigError, match="random weights") as into:
            find_previous(random_run, HAND_MADE_HASH)
        assert into.value.key == "output.previous"
        manifest = json.loads((previous / "_SUCCESS").read_text())
        manifest["model"]["random_init"] = True  # the night before ran on random weights
        (previous / "_SUCCESS").write_text(json.dumps(manifest))
        config = local_config(images, tmp_path / "night-2", output__previous=str(previous))
        with pytest.raises(ConfigError, match="random weights"):
            find_previous(config, HAND_MADE_HASH)

    def test_plan_checks_the_previous_output(
        self, images: Path, local_config: Any, write_output: Any, tmp_path: Path
    ) -> None:
        """pipeline plan refuses an uncommitted previous output as the run does, and names a committed one."""
        from pipeline.run.preflight import check_run

        half = write_output(tmp_path / "half", [{"row_id": "x", "status": "ok"}], parts=1, commit=False)
        with pytest.raises(ConfigError, match="not committed"):
            check_run(local_config(images, tmp_path / "night-2", output__previous=str(half)))
        missing = local_config(
            images,
            tmp_path / "night-2",
            output__previous=str(tmp_path / "none"),
            output__previous_missing="full_run",
        )
        verdict = check_run(missing)
        assert verdict.previous is not None
        assert "every input is computed" in verdict.previous
        assert any("every input is computed" in line for line in verdict.lines(missing))

    def test_previous_must_be_another_output(self, images: Path, tmp_path: Path) -> None:
        """output.previous naming output.uri is a config error naming the key."""
        out = str(tmp_path / "night")
        with pytest.raises(ConfigError, match=r"another output than output\.uri"):
            load_config(
                None,
                [
                    f"input.uri={images}",
                    f"output.uri={out}",
                    f"output.previous={out}/",
                    "model.random_init=true",
                ],
                environ={},
            )


class TestCarry:
    def test_failed_rows_retried_unless_kept(
        self, images: Path, local_config: Any, write_output: Any, tmp_path: Path
    ) -> None:
        """A failed row of an unchanged input is retried by default; output.keep_failed carries it."""
        import json

        import pyarrow.parquet as pq

        from pipeline.outputs import carry
        from pipeline.outputs.layout import INPUTS, OutputLocation
        from pipeline.outputs.previous import Previous

        config = local_config(images, tmp_path / "night-2")
        listing = list_inputs(config.input, config.storage)
        rows = [
            {"row_id": row_ids.row_id(uri), "uri": uri, "status": "failed" if uri.endswith("a.jpg") else "ok"}
            for uri in listing.uris
        ]
        previous_dir = write_output(tmp_path / "night-1", rows, parts=3)  # one row a part
        pq.write_table(fingerprints.inputs_table(listing), previous_dir / INPUTS)
        manifest = json.loads((previous_dir / "_SUCCESS").read_text())
        previous = Previous(OutputLocation.open(str(previous_dir), config.storage), manifest)
        for keep_failed, carried, retried in ((False, 2, 1), (True, 3, 0)):
            out = OutputLocation.open(str(tmp_path / f"out-{keep_failed}"), config.storage)
            todo, counts = carry.carry_forward(out, previous, listing, listing.uris, keep_failed=keep_failed)
            assert (counts.carried, counts.retried, counts.computed) == (carried, retried, 3 - carried)
            assert counts.parts_copied == carried  # each part's one row kept: copied whole
            written = pq.read_table(out.path_of("data")).column("row_id").to_pylist()
            assert sorted(written + [row_ids.row_id(uri) for uri in todo]) == sorted(
                row_ids.row_id(uri) for uri in listing.uris
            )
            assert [uri.endswith("a.jpg") for uri in todo] == ([True] if not keep_failed else [])
            # An attempt after a crash that kept these parts carries nothing again.
            again, counts = carry.carry_forward(out, previous, listing, todo, keep_failed=keep_failed)
            assert again == todo
            assert counts.parts_copied + counts.parts_filtered == 0

    def test_streamed_in_chunks_and_buckets_it_keeps_exactly_the_unchanged(
        self, local_config: Any, write_output: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Spilled in many chunks and buckets, the carry keeps each unchanged ok row once, leaves the rest."""
        import pyarrow.parquet as pq

        from pipeline.outputs import carry
        from pipeline.outputs.layout import OutputLocation

        monkeypatch.setattr(carry, "CHUNK_ROWS", 16)  # 120 rows: 8 chunks a side
        monkeypatch.setattr(carry, "BUCKET_ROWS", 2)  # two hex digits: up to 256 buckets
        root = tmp_path / "many"
        root.mkdir()
        for index in range(120):
            (root / f"{index:03d}.jpg").write_bytes(b"x" * (index + 1))
        config = local_config(root, tmp_path / "night-2")
        listing = list_inputs(config.input, config.storage)
        before = _prints(listing)
        rows = [
            {"row_id": row_ids.row_id(uri), "uri": uri, "status": "failed" if i % 10 == 0 else "ok"}
            | {"fingerprint": before[uri]}
            for i, uri in enumerate(listing.uris)
        ]
        previous = _previous(write_output(tmp_path / "night-1", rows, parts=7), listing, config)
        for index in range(5, 15):  # rewritten: another size
            (root / f"{index:03d}.jpg").write_bytes(b"changed" * 50)
        for index in range(100, 110):
            (root / f"{index:03d}.jpg").unlink()
        for index in range(200, 205):
            (root / f"{index:03d}.jpg").write_bytes(b"new")
        listing = list_inputs(config.input, config.storage)
        now = _prints(listing)
        failed = {row["uri"] for row in rows if row["status"] == "failed"}
        same = {uri for uri in listing.uris if before.get(uri) == now[uri]}
        kept = {row_ids.row_id(uri) for uri in same - failed}
        out = OutputLocation.open(config.output.uri, config.storage)
        todo, counts = carry.carry_forward(out, previous, listing, listing.uris, keep_failed=False)
        written = pq.read_table(out.path_of("data")).column("row_id").to_pylist()
        assert sorted(written) == sorted(kept)
        assert todo == [uri for uri in listing.uris if row_ids.row_id(uri) not in kept]
        assert (counts.carried, counts.retried, counts.dropped) == (len(kept), len(same & failed), 10)
        assert counts.computed == len(listing) - len(kept) == 25  # 10 changed, 5 new, 10 retried
        # Run again over what it left (an attempt after a crash): nothing carried twice.
        again, counts = carry.carry_forward(out, previous, listing, todo, keep_failed=False)
        assert again == todo
        assert counts.carried == len(kept)
        assert counts.parts_copied + counts.parts_filtered == 0

    def test_previous_written_before_rows_held_fingerprints(
        self, images: Path, local_config: Any, write_output: Any, tmp_path: Path
    ) -> None:
        """An output without the fingerprint column is carried by _inputs.parquet's; its parts gain it."""
        import pyarrow.parquet as pq

        from pipeline.outputs import carry
        from pipeline.outputs.layout import OutputLocation
        from pipeline.schema import output_schema

        config = local_config(images, tmp_path / "night-2")
        listing = list_inputs(config.input, config.storage)
        rows = [{"row_id": row_ids.row_id(uri), "uri": uri, "status": "ok"} for uri in listing.uris]
        folder = write_output(tmp_path / "night-1", rows, parts=3)
        for part in (folder / "data").iterdir():  # as written before the column existed
            pq.write_table(pq.read_table(part).drop_columns(["fingerprint"]), part)
        previous = _previous(folder, listing, config)
        out = OutputLocation.open(config.output.uri, config.storage)
        todo, counts = carry.carry_forward(out, previous, listing, listing.uris, keep_failed=False)
        assert (todo, counts.carried, counts.parts_copied, counts.parts_filtered) == ([], 3, 0, 3)
        table = pq.read_table(out.path_of("data"))
        assert table.schema.equals(output_schema())
        by_uri = dict(
            zip(table.column("uri").to_pylist(), table.column("fingerprint").to_pylist(), strict=True)
        )
        assert by_uri == _prints(listing)


class TestOlderOutputs:
    def test_inspect_compare_and_report_read_an_output_without_fingerprints(
        self, write_output: Any, local_config: Any, tmp_path: Path
    ) -> None:
        """inspect, compare and report read an output written before rows held their fingerprint."""
        import pyarrow.parquet as pq

        from pipeline.review.compare import compare_outputs
        from pipeline.review.inspection import inspect_output
        from pipeline.review.report import write_report

        rows = [{"row_id": f"r{i}", "status": "ok", "top_k_labels": ["cat", "dog"]} for i in range(4)]
        old = write_output(tmp_path / "old", rows, parts=2)
        for part in (old / "data").iterdir():
            pq.write_table(pq.read_table(part).drop_columns(["fingerprint"]), part)
        new = write_output(tmp_path / "new", [row | {"fingerprint": "1:v"} for row in rows], parts=2)
        storage = local_config(tmp_path, tmp_path / "unused").storage
        assert inspect_output(str(old), storage)["counts"] == {"rows": 4, "ok": 4, "failed": 0}
        assert compare_outputs(str(old), str(new), storage)["top1_agreement"] == 1.0
        assert write_report(str(old), storage, tmp_path / "old.html") > 0
