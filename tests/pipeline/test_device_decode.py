"""JPEG decode on the inference device (preprocess.decode_device: gpu), run here on the CPU device."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hostile_corpus import hostile_corpus
from PIL import Image

from pipeline.cli import samples
from pipeline.compute.decode import DecodeSettings, decode, resize_geometry
from pipeline.compute.device_decode import device_crops
from pipeline.outputs.layout import DATA_DIR
from pipeline.run.job import run_job
from pipeline.schema import ENCODING_JPEG, ENCODING_RAW

ON_DEVICE = DecodeSettings(232, 224, "bilinear", 89_478_485, reduced_decode=False, keep_jpeg=True)
CPU = torch.device("cpu")
SIZES = [(500, 375), (375, 500), (640, 480), (1600, 1200), (300, 200), (224, 224), (150, 100)]


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    rng = np.random.default_rng(3)
    return [samples.jpeg_bytes(samples.photo_like(rng, w, h)) for w, h in SIZES]


def _rows(out: Path) -> dict[str, dict]:
    return {row["uri"]: row for row in pq.read_table(out / DATA_DIR).to_pylist()}


def _pil_crop(blob: bytes, settings: DecodeSettings = ON_DEVICE) -> np.ndarray:
    crop = decode(blob, replace(settings, keep_jpeg=False)).crop
    assert crop is not None
    return crop


class TestHeaderOnly:
    def test_baseline_jpegs_stay_encoded(self, jpegs):
        """A baseline RGB JPEG is checked from its header and its own bytes are passed on."""
        for blob in jpegs:
            result = decode(blob, ON_DEVICE)
            assert result.crop is None
            assert result.encoded == blob

    def test_what_the_device_cannot_match_is_decoded_here(self, tmp_path):
        """Progressive, CMYK and EXIF-rotated JPEGs and non-JPEGs get a CPU crop; grey JPEGs stay encoded."""
        base = samples.photo_like(np.random.default_rng(4), 320, 240)
        exif = Image.Exif()
        exif[0x0112] = 6
        variants = {
            "progressive.jpg": ({"progressive": True}, base, False),
            "cmyk.jpg": ({}, base.convert("CMYK"), False),
            "rotated.jpg": ({"exif": exif.tobytes()}, base, False),
            "photo.png": ({}, base, False),
            "grey.jpg": ({}, base.convert("L"), True),
        }
        for name, (options, image, stays_encoded) in variants.items():
            path = tmp_path / name
            image.save(path, **options)
            result = decode(path.read_bytes(), ON_DEVICE)
            assert (result.encoded is not None) is stays_encoded, name
            assert (result.crop is not None) is not stays_encoded, name

    def test_header_checks_still_apply(self, tmp_path):
        """The pixel limit and truncation-free header errors are reported by the CPU worker as before."""
        root = tmp_path / "hostile"
        hostile_corpus(root)
        small_limit = replace(ON_DEVICE, max_image_pixels=1000)
        assert decode((root / "bomb.png").read_bytes(), ON_DEVICE).reason == "too_many_pixels"
        assert decode((root / "random-bytes.jpg").read_bytes(), ON_DEVICE).reason == "not_an_image"
        big = samples.jpeg_bytes(samples.photo_like(np.random.default_rng(5), 64, 64))
        assert decode(big, small_limit).reason == "too_many_pixels"


class TestGeometry:
    @pytest.mark.parametrize(
        ("size", "expected"),
        [
            ((500, 375), ((309, 232), (42, 4, 266, 228))),
            ((375, 500), ((232, 309), (4, 42, 228, 266))),
            ((224, 224), ((232, 232), (4, 4, 228, 228))),
        ],
    )
    def test_short_side_to_resize_size_then_centre_box(self, size, expected):
        """One size arithmetic for both paths: short side to resize_size, long side scaled, centred box."""
        assert resize_geometry(*size, ON_DEVICE) == expected


class TestDeviceCrops:
    def test_crops_match_the_cpu_path(self, jpegs):
        """Device crops equal PIL's full-scale decode + resize + crop within one grey level."""
        crops, failures = device_crops(jpegs, [ENCODING_JPEG] * len(jpegs), ON_DEVICE, CPU)
        assert failures == {}
        assert crops.shape == (len(jpegs), 224, 224, 3)
        assert crops.dtype == torch.uint8
        for crop, blob in zip(crops.numpy(), jpegs, strict=True):
            difference = np.abs(crop.astype(np.int16) - _pil_crop(blob).astype(np.int16))
            assert difference.max() <= 1

    def test_a_bad_jpeg_gets_the_cpu_reason_and_the_rest_keep_their_order(self, jpegs):
        """A truncated JPEG in the batch fails alone with reason truncated; good rows stay in row order."""
        raw = _pil_crop(jpegs[0]).tobytes()
        blobs = [jpegs[1], jpegs[2][:3000], raw, jpegs[3]]
        encodings = [ENCODING_JPEG, ENCODING_JPEG, ENCODING_RAW, ENCODING_JPEG]
        crops, failures = device_crops(blobs, encodings, ON_DEVICE, CPU)
        assert list(failures) == [1]
        assert failures[1].reason == decode(jpegs[2][:3000], replace(ON_DEVICE, keep_jpeg=False)).reason
        assert failures[1].reason == "truncated"
        assert len(crops) == 3
        assert np.array_equal(crops[1].numpy(), _pil_crop(jpegs[0]))  # the raw crop, untouched
        assert np.abs(crops[0].numpy().astype(np.int16) - _pil_crop(jpegs[1])).max() <= 1
        assert np.abs(crops[2].numpy().astype(np.int16) - _pil_crop(jpegs[3])).max() <= 1

    def test_rows_without_pixels_are_failures_not_dropped(self, jpegs):
        """A row with neither encoding is reported as a failure, never silently left out."""
        crops, failures = device_crops([jpegs[0], b""], [ENCODING_JPEG, None], ON_DEVICE, CPU)
        assert len(crops) == 1
        assert failures[1].reason == "decode_error"


@pytest.mark.slow
class TestJobWithDeviceDecode:
    def test_every_row_once_with_the_same_outcomes(self, ray_session, sample_images, make_config, tmp_path):
        """decode_device: gpu keeps the output contract and the CPU path's top-1 on full-scale decode."""
        on_cpu = make_config(
            sample_images, output__uri=str(tmp_path / "cpu"), preprocess__reduced_decode="false"
        )
        on_device = make_config(
            sample_images,
            output__uri=str(tmp_path / "device"),
            preprocess__reduced_decode="false",
            preprocess__decode_device="gpu",
        )
        cpu_summary, device_summary = run_job(on_cpu), run_job(on_device)
        cpu_rows, device_rows = _rows(tmp_path / "cpu"), _rows(tmp_path / "device")
        assert set(device_rows) == set(cpu_rows)
        assert len(device_rows) == device_summary.inputs == 43
        assert device_summary.failed_by_reason == cpu_summary.failed_by_reason
        for uri, row in cpu_rows.items():
            assert (device_rows[uri]["status"], device_rows[uri]["reason"]) == (row["status"], row["reason"])
        good = [uri for uri, row in cpu_rows.items() if row["status"] == "ok"]
        agree = np.mean([cpu_rows[u]["top_k_ids"][0] == device_rows[u]["top_k_ids"][0] for u in good])
        assert agree >= 0.95
