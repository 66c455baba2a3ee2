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


class TestFingerprints:
    def test_local_files_unchanged_by_size_and_mtime(
        self, images: Path, local_config: Any, tmp_path: Path
    ) -> None:
        """A local file is unchanged while its size and mtime are; rewritten, renamed or new, it is not."""
        config = local_config(images, tmp_path / "out")
        before = fingerprints.inputs_table(list_inputs(config.input, config.storage))
        (images / "a.jpg").write_bytes(b"other bytes, other size")
        later = (images / "b.jpg").stat().st_mtime + 5
        os.utime(images / "b.jpg", (later, later))  # same bytes, touched: computed again
        (images / "c.jpg").rename(images / "c2.jpg")
        (images / "d.jpg").write_bytes(b"new")
        now = list_inputs(config.input, config.storage)
        assert fingerprints.unchanged(before, now, fingerprints.listed_ids(now)).to_pylist() == []
        (images / "c2.jpg").rename(images / "c.jpg")
        now = list_inputs(config.input, config.storage)
        assert fingerprints.unchanged(before, now, fingerprints.listed_ids(now)).to_pylist() == [
            row_ids.row_id(str(images / "c.jpg"))
        ]
        assert fingerprints.gone(before, fingerprints.listed_ids(now)) == 0
        (images / "c.jpg").unlink()
        assert (
            fingerprints.gone(before, fingerprints.listed_ids(list_inputs(config.input, config.storage))) == 1
        )

    def test_manifest_entries_have_no_fingerprint(
        self, images: Path, local_config: Any, tmp_path: Path
    ) -> None:
        """A manifest's entries carry no stamp: none is found unchanged, every one is computed again."""
        manifest = tmp_path / "list.csv"
        manifest.write_text("uri\n" + "\n".join(str(p) for p in sorted(images.iterdir())) + "\n")
        config = local_config(manifest, tmp_path / "out")
        listing = list_inputs(config.input, config.storage)
        assert len(listing) == 3
        assert (
            len(
                fingerprints.unchanged(
                    fingerprints.inputs_table(listing), listing, fingerprints.listed_ids(listing)
                )
            )
            == 0
        )


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
