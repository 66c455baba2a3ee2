"""Hostile inputs: every awkward file is classified or recorded with a precise reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hostile_corpus import hostile_corpus
from PIL import Image

from pipeline.compute.decode import DecodeSettings, decode, resize_and_crop
from pipeline.compute.model import build_model
from pipeline.errors import FailureBudgetExceededError, ModelError, ResumeRefusedError
from pipeline.outputs.layout import DATA_DIR, MANIFEST
from pipeline.run.job import run_job

SETTINGS = DecodeSettings(256, 224, "bilinear", 89_478_485, reduced_decode=True)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str | None]]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, hostile_corpus(root)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


class TestDecode:
    def test_exif_orientation_is_honoured(self, hostile):
        """An orientation-6 JPEG decodes like the image rotated for display, not as stored."""
        root, _ = hostile
        stored = Image.open(root / "exif-rotated.jpg")
        stored.load()
        upright = resize_and_crop(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270), SETTINGS)
        as_stored = resize_and_crop(stored.convert("RGB"), SETTINGS)
        crop = decode((root / "exif-rotated.jpg").read_bytes(), SETTINGS).crop
        assert crop is not None
        assert _diff(crop, upright) < 3 < _diff(crop, as_stored)

    def test_animated_gif_uses_first_frame(self, hostile):
        """An animated GIF is classified on its first frame."""
        root, _ = hostile
        gif = Image.open(root / "animated.gif")
        first = resize_and_crop(gif.convert("RGB"), SETTINGS)
        gif.seek(1)
        second = resize_and_crop(gif.convert("RGB"), SETTINGS)
        crop = decode((root / "animated.gif").read_bytes(), SETTINGS).crop
        assert crop is not None
        assert _diff(crop, first) < 1 < _diff(crop, second)

    def test_sixteen_bit_png_is_scaled_not_clipped(self, hostile):
        """A 16-bit grayscale PNG keeps its tones (not all white from clipping)."""
        root, _ = hostile
        crop = decode((root / "gray16.png").read_bytes(), SETTINGS).crop
        assert crop is not None
        assert 20 < crop.mean() < 235
        assert crop.std() > 10

    def test_transparency_is_composited_on_white(self, hostile):
        """Fully transparent pixels become white, opaque ones keep their colour."""
        root, _ = hostile
        crop = decode((root / "alpha.png").read_bytes(), SETTINGS).crop
        assert crop is not None
        assert crop[:5].mean() > 240  # alpha ~0 at the top of the gradient
        assert crop[-5:].mean() < 235

    def test_bomb_is_rejected_from_the_header(self, hostile):
        """A 60000x60000 declared image is refused before any pixel is allocated."""
        root, _ = hostile
        result = decode((root / "bomb.png").read_bytes(), SETTINGS)
        assert result.reason == "too_many_pixels"
        assert "60000x60000" in result.detail


@pytest.mark.slow
class TestHostileRun:
    def _manifest(self, tmp_path: Path, uris: list[str]) -> Path:
        path = tmp_path / "inputs.parquet"
        pq.write_table(pa.table({"uri": uris}), path)
        return path

    def test_each_hostile_file_has_its_outcome(
        self, ray_session, hostile, sample_images, make_config, tmp_path, reliability
    ):
        """Each hostile file gets its expected status and reason; good ones are classified as when alone."""
        root, expected = hostile
        good = sorted(str(p) for p in sample_images.glob("shard-*/*"))[:12]
        hostile_uris = [str(root / name) for name in expected]
        mixed = make_config(
            self._manifest(tmp_path, good + hostile_uris), output__uri=str(tmp_path / "mixed"), model__top_k=3
        )
        summary = run_job(mixed)
        rows = {row["uri"]: row for row in pq.read_table(tmp_path / "mixed" / DATA_DIR).to_pylist()}
        assert len(rows) == summary.inputs == len(good) + len(expected)
        for name, (status, reason) in expected.items():
            row = rows[str(root / name)]
            assert (row["status"], row["reason"]) == (status, reason), name
            if status == "ok":
                assert len(row["top_k_ids"]) == 3
            else:
                assert row["error"]
        (tmp_path / "alone-inputs").mkdir()
        alone = make_config(
            self._manifest(tmp_path / "alone-inputs", good),
            output__uri=str(tmp_path / "alone"),
            model__top_k=3,
        )
        run_job(alone)
        baseline = {row["uri"]: row for row in pq.read_table(tmp_path / "alone" / DATA_DIR).to_pylist()}
        reliability.append(
            {
                "scenario": "hostile inputs",
                "inputs": len(rows),
                "inputs_by_kind": {name: reason or status for name, (status, reason) in expected.items()},
                "faults": 0,
                "rows_lost": len(set(good + hostile_uris) - set(rows)),
                "rows_duplicated": summary.inputs - len(rows),
            }
        )
        for uri in good:
            assert rows[uri]["top_k_ids"] == baseline[uri]["top_k_ids"]
            assert rows[uri]["score"] == pytest.approx(baseline[uri]["score"], abs=1e-5)

    def test_failure_budget_stops_the_commit_then_a_higher_budget_commits_without_redoing_a_row(
        self, ray_session, hostile, make_config, tmp_path
    ):
        """Above output.max_failure_fraction the job fails with a clear message and writes no manifest.

        Then (one refused run serves both checks): the exit-5 message says what to run; raising the
        budget (and a smaller batch) resumes and commits the rows already written; another model is
        another run and is refused.
        """
        root, expected = hostile
        manifest = self._manifest(tmp_path, [str(root / name) for name in expected])
        config = make_config(manifest, output__max_failure_fraction="0.2")
        with pytest.raises(
            FailureBudgetExceededError, match=r"above output.max_failure_fraction=0.2"
        ) as refused:
            run_job(config)
        assert not (Path(config.output.uri) / MANIFEST).exists()
        assert pq.read_table(Path(config.output.uri) / DATA_DIR).num_rows == len(expected)

        message = str(refused.value)
        assert "--set output.max_failure_fraction=" in message
        assert "--overwrite" in message
        with pytest.raises(ResumeRefusedError, match="different configuration"):
            run_job(make_config(manifest, output__max_failure_fraction="1.0", model__name="resnet34"))
        summary = run_job(
            make_config(manifest, output__max_failure_fraction="1.0", inference__batch_size="2")
        )
        assert (summary.status, summary.resumed, summary.processed_this_run) == ("succeeded", True, 0)
        assert summary.inputs == len(expected)
        assert (Path(summary.output_uri) / MANIFEST).exists()


class TestModelSafety:
    def test_pickled_code_is_refused(self, tmp_path):
        """A checkpoint that needs arbitrary unpickling is refused (weights_only)."""
        from pipeline.compute.checkpoints import read_state_dict

        class Payload:
            def __reduce__(self):
                return (print, ("pwned",))

        path = tmp_path / "evil.pt"
        torch.save({"weights": Payload()}, path)
        with pytest.raises(ModelError, match="weights_only=True"):
            read_state_dict(path.read_bytes(), str(path))

    def test_preprocessing_follows_the_named_weights(self):
        """ResNet-50 V1 weights were trained at resize 256, not the DEFAULT (V2) 232: model.preprocessing
        says so, and an unknown name is exit 2 listing the architecture's weights."""
        from pipeline.compute.model import resolve_spec
        from pipeline.config import ModelConfig, PreprocessConfig
        from pipeline.errors import ConfigError

        default, _ = resolve_spec(ModelConfig(name="resnet50", random_init=True), PreprocessConfig())
        v1, _ = resolve_spec(
            ModelConfig(name="resnet50", random_init=True, preprocessing="ResNet50_Weights.IMAGENET1K_V1"),
            PreprocessConfig(),
        )
        assert (default.preprocessing.resize_size, v1.preprocessing.resize_size) == (232, 256)
        assert v1.preprocessing.crop_size == 224
        with pytest.raises(ConfigError, match=r"ResNet50_Weights\.IMAGENET1K_V1") as refused:
            resolve_spec(
                ModelConfig(name="resnet50", random_init=True, preprocessing="ResNet50_Weights.V9"),
                PreprocessConfig(),
            )
        assert refused.value.exit_code == 2

    def test_explicit_mean_and_std_replace_the_weights_and_change_the_config_hash(
        self, make_config, tmp_path
    ):
        """Weights trained with their own normalisation: preprocess.mean/std (0-1 scale) are used,
        recorded with the preprocessing, and a resume cannot change them; 0-255 values are refused."""
        from pipeline.compute.model import resolve_spec
        from pipeline.config import ModelConfig, PreprocessConfig, load_config
        from pipeline.errors import ConfigError

        own = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize_size=160, crop_size=128)
        spec, _ = resolve_spec(ModelConfig(name="resnet18", random_init=True), own)
        assert (spec.preprocessing.mean, spec.preprocessing.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        assert (spec.preprocessing.resize_size, spec.preprocessing.crop_size) == (160, 128)
        base = make_config(tmp_path)
        assert make_config(tmp_path, preprocess__mean="[0.5, 0.5, 0.5]").config_hash() != base.config_hash()
        for key, value in (
            ("mean", "[123.7, 116.3, 103.5]"),
            ("std", "[0.2, 0, 0.2]"),
            ("mean", "[0.5, 0.5]"),
        ):
            with pytest.raises(ConfigError, match=f"preprocess.{key}") as refused:
                load_config(
                    None, [f"input.uri={tmp_path}", "model.random_init=true", f"preprocess.{key}={value}"]
                )
            assert refused.value.exit_code == 2

    def test_a_whole_pickled_model_is_refused_with_what_to_do(self, tmp_path):
        """torch.save(model), not its state dict: refused, named as such, with the fix; no colour codes."""
        import torchvision

        from pipeline.compute.checkpoints import read_state_dict

        path = tmp_path / "whole-model.pth"
        torch.save(torchvision.models.resnet18(), path)
        with pytest.raises(ModelError) as refused:
            read_state_dict(path.read_bytes(), str(path))
        message = str(refused.value)
        assert "holds a whole pickled model (torchvision.models.resnet.ResNet)" in message
        assert "torch.save(model.state_dict(), 'weights.pth')" in message
        assert "\x1b[" not in message

    def test_checkpoint_for_another_architecture(self, weights_file):
        """resnet18 weights given for resnet34 fail with a message naming the architecture."""
        from safetensors.torch import load_file

        with pytest.raises(ModelError, match=r"does not match architecture 'resnet34'"):
            build_model("resnet34", 1000, load_file(str(weights_file)))
