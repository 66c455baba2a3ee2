"""Inputs that used to hang or blow up a worker, leak a signature, or come back under another name.

Each becomes a row with a reason, and the job commits; real files, FIFOs and devices.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.config import StorageConfig
from pipeline.errors import InputError
from pipeline.inputs import reading, row_ids
from pipeline.inputs.listing import list_inputs
from pipeline.ops import redaction
from pipeline.run.job import run_job
from pipeline.schema import FailureReason

pytestmark = pytest.mark.slow

SECRET_SIGNATURE = "c2VjcmV0LXNpZ25hdHVyZS0xMjM0NTY3ODkw"  # noqa: S105  # a fake, searched for
LIMITS = reading.ReadLimits(max_bytes=1 << 20, timeout_s=30)


def rows_by_uri(out: Path) -> dict[str, dict]:
    """The output rows, keyed by their ``uri`` column."""
    return {row["uri"]: row for row in pq.read_table(out / "data").to_pylist()}


def write_manifest(path: Path, uris: list[str | None]) -> Path:
    """A Parquet manifest with one ``uri`` column, written exactly as given."""
    pq.write_table(pa.table({"uri": pa.array(uris, pa.string())}), path)
    return path


class TestReads:
    def test_fifo_is_refused_at_once(self, tmp_path):
        """A FIFO named like an image is no read that waits for a writer: it is its row's reason."""
        fifo = tmp_path / "x.jpg"
        os.mkfifo(fifo)
        started = time.monotonic()
        data, reason, detail = reading.fetch(storage.Filesystems(StorageConfig()), str(fifo), LIMITS)
        assert (data, reason) == (None, FailureReason.NOT_A_REGULAR_FILE)
        assert "FIFO" in detail
        assert time.monotonic() - started < 5

    def test_devices_and_oversized_files_are_not_read(self, tmp_path):
        """/dev/zero is not a regular file; a file over the cap fails as too_large, unread."""
        fs = storage.Filesystems(StorageConfig())
        assert reading.fetch(fs, "/dev/zero", LIMITS)[1] == FailureReason.NOT_A_REGULAR_FILE
        big = tmp_path / "big.jpg"
        big.write_bytes(b"\xff" * 5000)
        small = reading.ReadLimits(max_bytes=4096, timeout_s=30)
        data, reason, detail = reading.fetch(fs, str(big), small)
        assert (data, reason) == (None, FailureReason.TOO_LARGE)
        assert "5000 bytes" in detail
        assert reading.fetch(fs, str(big), LIMITS)[0] == b"\xff" * 5000

    def test_a_hung_read_times_out_alone(self, tmp_path):
        """A read that never answers fails its row with ``timeout``; the rest of the batch is read."""
        release = threading.Event()

        class Hanging:
            def cat_file(self, path: str, start: int = 0, end: int | None = None) -> bytes:
                if "hang" in path:
                    release.wait(60)
                return b"data"

        class Stores(storage.Filesystems):
            def for_scheme(self, scheme: str) -> Hanging:  # type: ignore[override]
                return Hanging()

        uris = ["s3://b/a.jpg", "s3://b/hang.jpg", "s3://b/c.jpg", "s3://b/d.jpg"]
        started = time.monotonic()
        limits = reading.ReadLimits(max_bytes=100, timeout_s=1)
        results = reading.fetch_all(Stores(StorageConfig()), uris, limits, threads=2)
        release.set()
        assert time.monotonic() - started < 10
        assert [reason for _, reason, _ in results] == [None, FailureReason.TIMEOUT, None, None]

    def test_each_uri_is_read_by_its_own_scheme(self, tmp_path, monkeypatch):
        """A local path first does not make an ``s3://`` or ``http://`` row read from the local disk."""
        monkeypatch.chdir(tmp_path)
        (tmp_path / "bucket").mkdir()
        (tmp_path / "bucket" / "secret.jpg").write_bytes(b"local secret")
        good = tmp_path / "good.jpg"
        good.write_bytes(b"local")
        seen: list[str] = []

        class Store:
            def cat_file(self, path: str, start: int = 0, end: int | None = None) -> bytes:
                seen.append(path)
                return b"from s3"

        class Stores(storage.Filesystems):
            def for_scheme(self, scheme: str) -> Store:  # type: ignore[override]
                assert scheme == "s3"
                return Store()

        uris = [str(good), "s3://bucket/secret.jpg", "http://169.254.169.254/latest/meta-data.jpg"]
        results = reading.fetch_all(Stores(StorageConfig()), uris, LIMITS, threads=1)
        assert results[0] == (b"local", None, "")
        assert results[1] == (b"from s3", None, "")
        assert results[2][1] == FailureReason.ADDRESS_NOT_ALLOWED  # a metadata address, never asked
        assert seen == ["bucket/secret.jpg"]


class TestJob:
    def test_fifo_in_a_folder_does_not_hang_the_batch(
        self, ray_session, sample_images, make_config, tmp_path
    ):
        """The probe's case: a FIFO among good images. The run commits; the FIFO is a row with a reason."""
        images = Path(shutil.copytree(sample_images, tmp_path / "images"))
        os.mkfifo(images / "x.jpg")
        config = make_config(images, resources__stall_timeout_s=60)
        summary = run_job(config)
        assert summary.failed_by_reason[FailureReason.NOT_A_REGULAR_FILE] == 1
        assert summary.succeeded == 40
        rows = rows_by_uri(Path(config.output.uri))
        assert rows[str(images / "x.jpg")]["reason"] == "not_a_regular_file"

    def test_a_file_name_that_is_not_utf8_is_one_failed_row(
        self, ray_session, sample_images, make_config, tmp_path
    ):
        """bad\\xff\\xfe.jpg among good images: an invalid_uri row, its name escaped; commits, resumes."""
        images = Path(shutil.copytree(sample_images, tmp_path / "images"))
        jpeg = next(images.glob("shard-*/*.jpg")).read_bytes()
        Path(os.fsdecode(os.fsencode(images) + b"/bad\xff\xfe.jpg")).write_bytes(jpeg)  # raw bytes
        config = make_config(images)
        summary = run_job(config)
        assert summary.status == "succeeded"
        assert (summary.inputs, summary.succeeded) == (44, 40)
        assert summary.failed_by_reason[FailureReason.INVALID_URI] == 1
        escaped = f"{images}/bad\\xff\\xfe.jpg"  # the name's text, each undecodable byte as \xNN
        out = Path(config.output.uri)
        row = rows_by_uri(out)[escaped]
        assert (row["status"], row["reason"], row["row_id"]) == (
            "failed",
            "invalid_uri",
            row_ids.row_id(escaped),
        )
        assert "not valid UTF-8" in row["error"]
        (out / "_SUCCESS").unlink()  # unfinished again: the resume lists the same name and redoes nothing
        again = run_job(config)
        assert (again.status, again.resumed, again.processed_this_run) == ("succeeded", True, 0)

    def test_hostile_manifest_rows(self, ray_session, sample_images, make_config, tmp_path):
        """Every hostile manifest entry is its own row, under the URI exactly as given; nothing leaks."""
        images = Path(shutil.copytree(sample_images, tmp_path / "images"))
        good = sorted(images.glob("shard-*/*.jpg"))[:3]
        outside = tmp_path / "outside"
        outside.mkdir()
        shutil.copy(good[0], outside / "secret.jpg")
        (images / "link.jpg").symlink_to(outside / "secret.jpg")
        big = images / "big.jpg"
        big.write_bytes(good[1].read_bytes() + b"\0" * 300_000)
        signed = f"https://bucket.example/img.jpg?X-Amz-Credential=AKIA1&X-Amz-Signature={SECRET_SIGNATURE}"
        given = [
            str(good[0]),
            f"{images}/../images/{good[1].relative_to(images)}",  # kept as written, not resolved
            str(good[2].relative_to(images)),  # relative: read beside the manifest
            str(images / "link.jpg"),  # a symlink out of the allowed root
            "/dev/zero",
            str(big),
            f"{images}/bad\x00name.jpg",
            signed,
        ]
        manifest = write_manifest(images / "manifest.parquet", [*given[:4], None, "", *given[4:]])
        config = make_config(
            manifest,
            input__allowed_roots=f"[{images}]",
            input__allowed_schemes="[local]",  # and no URLs: the signed one is refused unread
            preprocess__max_input_bytes=200_000,
        )
        summary = run_job(config)
        assert summary.inputs == len(given)
        assert summary.empty_manifest_cells == 2
        rows = rows_by_uri(Path(config.output.uri))
        masked = redaction.redact_url(signed)
        assert set(rows) == {*given[:-1], masked}
        expected = {
            given[0]: None,
            given[1]: None,
            given[2]: None,
            given[3]: "outside_allowed_roots",
            "/dev/zero": "outside_allowed_roots",
            str(big): "too_large",
            given[6]: "invalid_uri",
            masked: "scheme_not_allowed",
        }
        assert {uri: row["reason"] for uri, row in rows.items()} == expected
        assert rows[given[0]]["row_id"] == row_ids.row_id(given[0])
        assert rows[masked]["row_id"] == row_ids.row_id(signed)  # the id still comes from the full URI
        out = Path(config.output.uri)
        for path in out.rglob("*"):
            if path.is_file():
                assert SECRET_SIGNATURE.encode() not in path.read_bytes(), path

    def test_devices_fail_as_not_regular_without_roots(
        self, ray_session, sample_images, make_config, tmp_path
    ):
        """Without allowed roots, /dev/zero is refused by its kind, not read until memory runs out."""
        manifest = write_manifest(
            tmp_path / "m.parquet", [str(next(sample_images.glob("shard-*/*.jpg"))), "/dev/zero"]
        )
        summary = run_job(make_config(manifest))
        assert summary.failed_by_reason == {"not_a_regular_file": 1}

    def test_duplicates_are_named(self, sample_images, tmp_path):
        """A manifest listing a URI twice is refused naming it."""
        image = str(next(sample_images.glob("shard-*/*.jpg")))
        manifest = write_manifest(tmp_path / "m.parquet", [image, image])
        from pipeline.config import InputConfig

        with pytest.raises(InputError, match=f"1 URIs more than once \\({image}\\)"):
            list_inputs(InputConfig(uri=str(manifest)), StorageConfig())


def test_signed_url_and_nul_byte_via_cli(sample_images, make_config, tmp_path):
    """The CLI run of such a manifest exits 0 and prints no signature."""
    from pipeline.config import dump_yaml

    signed = f"https://bucket.example/img.jpg?X-Amz-Signature={SECRET_SIGNATURE}"
    manifest = write_manifest(
        tmp_path / "m.parquet", [str(next(sample_images.glob("shard-*/*.jpg"))), signed, "a\x00b.jpg"]
    )
    config_path = tmp_path / "job.yaml"
    config = make_config(manifest, input__allowed_schemes="[local]")
    config_path.write_text(dump_yaml(config), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET_SIGNATURE not in result.stdout + result.stderr
    assert "scheme_not_allowed" in result.stdout
    assert "invalid_uri" in result.stdout
