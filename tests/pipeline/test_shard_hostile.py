"""Hostile shards become rows with a reason or shard-level failures, never a crash.

Parquet: a null image cell, a file that is not Parquet, one cut short, one without the image
column. WebDataset: a truncated tar, a member named with ``..``, a member that is not an
image, a record with no image member, a file that is not a tar. Real ``run_job`` calls on the
shared local Ray cluster.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import samples
from pipeline.cli.sample_shards import add_member
from pipeline.errors import FailureBudgetExceededError
from pipeline.outputs.layout import DATA_DIR, FAILURES, MANIFEST
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow
SMALL = {"preprocess__resize_size": 40, "preprocess__crop_size": 32}


def _jpegs(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [samples.jpeg_bytes(samples.photo_like(rng, 48, 40)) for _ in range(count)]


def _rows(out: Path) -> dict[str, dict]:
    return {row["uri"]: row for row in pq.read_table(out / DATA_DIR).to_pylist()}


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_hostile_parquet_shards(ray_session, make_config, tmp_path):
    """A null cell is a row (no_image); unreadable shards are failed_shards with URI and reason."""
    folder = tmp_path / "shards"
    folder.mkdir()
    images = _jpegs(4)
    good = pa.table({"image": pa.array([*images, None], pa.binary()), "k": ["a", "b", "c", "d", "e"]})
    (folder / "a-good.parquet").write_bytes(_parquet_bytes(good))
    (folder / "b-not-parquet.parquet").write_bytes(b"PAR1 this is a text file, not a table\n")
    (folder / "c-cut.parquet").write_bytes(_parquet_bytes(good)[:300])
    (folder / "d-no-image.parquet").write_bytes(_parquet_bytes(pa.table({"photo": [b"x"]})))
    out = tmp_path / "out"
    config = make_config(
        folder, output__uri=str(out), input__format="parquet", input__key_column="k", **SMALL
    )
    summary = run_job(config)
    assert (summary.inputs, summary.succeeded, summary.failed) == (5, 4, 1)
    rows = _rows(out)
    null = rows[f"{folder / 'a-good.parquet'}#4"]
    assert (null["status"], null["reason"]) == ("failed", "no_image")
    failed = {Path(item["uri"]).name: item["reason"] for item in summary.failed_shards}
    assert failed == {
        "b-not-parquet.parquet": "not_parquet",
        "c-cut.parquet": "not_parquet",
        "d-no-image.parquet": "missing_column",
    }
    committed = json.loads((out / MANIFEST).read_text())
    assert committed["failed_shards"] == summary.failed_shards
    assert all(item["error"] for item in committed["failed_shards"])
    assert pq.read_table(out / FAILURES).column("reason").to_pylist() == ["no_image"]


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            add_member(archive, name, data)
    return buffer.getvalue()


def test_hostile_webdataset_shards(ray_session, make_config, tmp_path):
    """Bad records are rows with a reason; a truncated tar keeps the records before the cut."""
    folder = tmp_path / "tars"
    folder.mkdir()
    image = _jpegs(6, seed=1)
    (folder / "a.tar").write_bytes(
        _tar(
            [
                ("r0.jpg", image[0]),
                ("r0.json", b'{"n": 0}'),
                ("r1.json", b'{"n": 1}'),  # no image member
                ("r2.jpg", b"plain text, not a JPEG"),  # not an image
                ("../r3.jpg", image[1]),  # escapes the archive
                ("r4.png", image[5]),
            ]
        )
    )
    whole = _tar([(f"t{i}.jpg", image[2 + i]) for i in range(3)])
    with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
        cut = archive.getmembers()[2].offset_data + 100  # inside the third record's image
    (folder / "b-truncated.tar").write_bytes(whole[:cut])
    (folder / "c-not-a-tar.tar").write_bytes(b"\x89PNG not a tar at all" * 40)
    out = tmp_path / "out"
    config = make_config(
        folder, output__uri=str(out), input__format="webdataset", input__passthrough_columns="[json]", **SMALL
    )
    summary = run_job(config)
    rows = _rows(out)
    outcome = {uri.removeprefix(f"{folder}/"): (row["status"], row["reason"]) for uri, row in rows.items()}
    assert outcome == {
        "a.tar#r0": ("ok", None),
        "a.tar#r1": ("failed", "no_image"),
        "a.tar#r2": ("failed", "not_an_image"),
        "a.tar#../r3": ("failed", "unsafe_member"),
        "a.tar#r4": ("ok", None),
        "b-truncated.tar#t0": ("ok", None),
        "b-truncated.tar#t1": ("ok", None),
    }
    assert rows[f"{folder / 'a.tar'}#r0"]["json"] == '{"n": 0}'
    failed = {Path(item["uri"]).name: item["reason"] for item in summary.failed_shards}
    assert failed == {"b-truncated.tar": "truncated", "c-not-a-tar.tar": "not_a_tar"}


def test_unreadable_shards_count_against_the_failure_budget(ray_session, make_config, tmp_path):
    """Every row fine, one shard unreadable: no commit at a zero budget; committed once it is opened."""
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(_parquet_bytes(pa.table({"image": pa.array(_jpegs(3), pa.binary())})))
    (folder / "b.parquet").write_bytes(b"not parquet")
    out = tmp_path / "out"
    config = make_config(folder, output__uri=str(out), output__max_failure_fraction=0.0, **SMALL)
    with pytest.raises(
        FailureBudgetExceededError, match=r"1 of 4 rows failed \(with 1 shards that could not"
    ):
        run_job(config)
    assert not (out / MANIFEST).exists()
    opened = make_config(folder, output__uri=str(out), output__max_failure_fraction=0.5, **SMALL)
    summary = run_job(opened)
    assert (summary.status, summary.succeeded, summary.processed_this_run) == ("succeeded", 3, 0)
    assert [Path(item["uri"]).name for item in summary.failed_shards] == ["b.parquet"]
