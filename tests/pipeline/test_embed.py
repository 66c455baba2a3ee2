"""``model.task: embed``: what vector is taken per family, the output schema, and the job's rows
checked one by one against plain single-process torch on the same weights and crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers.tiny_models import torchvision_weights
from torch_oracle import reference_inputs, reference_model

from pipeline.cli import main
from pipeline.compute.inference import InferenceSettings, Predictor
from pipeline.compute.model import Embedding, build_model, embedding_dim, resolve_spec
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.inputs.listing import list_inputs
from pipeline.outputs.layout import DATA_DIR, MANIFEST, OutputLocation
from pipeline.run.job import run_job
from pipeline.schema import output_schema

CLASSIFY_COLUMNS = {"top_k_ids", "top_k_labels", "top_k_scores", "label", "score"}

# The Linear each family's logits come from: the embedding is its input.
FINAL_LINEAR = {
    "resnet18": lambda m: m.fc,
    "convnext_tiny": lambda m: m.classifier[2],  # after LayerNorm2d and Flatten
    "efficientnet_b0": lambda m: m.classifier[1],  # after Dropout (a no-op in eval)
    "mobilenet_v3_small": lambda m: m.classifier[3],  # after Linear(576, 1024), Hardswish, Dropout
    "regnet_x_400mf": lambda m: m.fc,
}
DIMS = {
    "resnet18": 512,
    "resnet50": 2048,
    "convnext_tiny": 768,
    "efficientnet_b0": 1280,
    "mobilenet_v3_small": 1024,
    "vit_b_16": 768,
    "swin_t": 768,
    "regnet_x_400mf": 400,
}


class TestWhatIsTaken:
    @pytest.mark.parametrize("name", sorted(FINAL_LINEAR))
    def test_embedding_is_the_input_of_the_final_linear(self, name):
        """The embed model's output is what the classifier's last Linear receives, and that Linear
        alone turns it into the logits: nothing runs after it."""
        torch.manual_seed(0)
        classifier = build_model(name, 1000, None)
        embedder = build_model(name, 1000, classifier.state_dict(), task="embed")
        seen = {}
        final = FINAL_LINEAR[name](classifier)
        final.register_forward_hook(lambda _m, args, _out: seen.update(x=args[0]))
        x = torch.randn(2, 3, 96, 96)
        with torch.inference_mode():
            logits = classifier(x)
            vectors = embedder(x)
        assert vectors.shape == (2, DIMS[name])
        torch.testing.assert_close(vectors, seen["x"])
        torch.testing.assert_close(final(vectors), logits)

    @pytest.mark.parametrize("name", sorted(DIMS))
    def test_dimension_is_known_without_building_the_model(self, name):
        """The driver learns the dimension from the architecture alone (no weights, no forward)."""
        assert embedding_dim(name, 1000) == DIMS[name]

    def test_an_architecture_without_a_final_linear_is_refused(self):
        """SqueezeNet's logits come from a convolution: no vector before a classifier to take."""
        with pytest.raises(ConfigError, match=r"model\.task"):
            embedding_dim("squeezenet1_0", 1000)


class TestSchema:
    def test_the_two_schemas(self):
        """embed: a fixed-size ``embedding`` column and no classification columns; classify: the reverse.
        Both keep the row identity, status, reason and error."""
        classify = output_schema()
        embed = output_schema("embed", 512, "float16")
        assert embed.field("embedding").type == pa.list_(pa.float16(), 512)
        assert "embedding" not in classify.names
        assert set(classify.names) >= CLASSIFY_COLUMNS
        assert not CLASSIFY_COLUMNS & set(embed.names)
        common = {"row_id", "uri", "status", "reason", "error", "model_name", "model_sha256", "run_id"}
        assert common <= set(classify.names) & set(embed.names)


class TestConfig:
    def test_embed_needs_no_labels(self, tmp_path):
        """A labels file that does not exist is not read for embed: labels mean nothing there."""
        config = load_config(
            None,
            [
                "input.uri=/data",
                "model.name=resnet18",
                "model.random_init=true",
                "model.task=embed",
                f"model.labels={tmp_path / 'missing.txt'}",
            ],
            environ={},
        )
        spec, _ = resolve_spec(config.model, config.preprocess)
        assert (spec.task, spec.embedding) == ("embed", Embedding(512, "float32", normalized=False))
        assert config.model.normalize is False

    def test_an_unknown_task_is_refused(self):
        with pytest.raises(ConfigError, match=r"model\.task"):
            load_config(None, ["input.uri=/data", "model.random_init=true", "model.task=detect"], environ={})


def _spec(task: str, normalize: bool = False):
    config = load_config(
        None,
        [
            "input.uri=/data",
            "model.name=resnet18",
            "model.random_init=true",
            f"model.task={task}",
            f"model.normalize={str(normalize).lower()}",
            "preprocess.resize_size=72",
            "preprocess.crop_size=64",
        ],
        environ={},
    )
    return resolve_spec(config.model, config.preprocess)[0]


class TestPredictor:
    def test_embed_returns_one_vector_per_image(self):
        images = np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
        (vectors,) = Predictor(_spec("embed"), None, InferenceSettings(precision="fp32")).predict(images)
        assert vectors.shape == (5, 512)
        assert vectors.dtype == np.float32
        (empty,) = Predictor(_spec("embed"), None, InferenceSettings(precision="fp32")).predict(images[:0])
        assert empty.shape == (0, 512)

    def test_normalize_gives_unit_vectors(self):
        images = np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
        predictor = Predictor(_spec("embed", normalize=True), None, InferenceSettings(precision="fp32"))
        (vectors,) = predictor.predict(images)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# The job on the real Ray Data path, checked row by row.

CONVNEXT_CROP = ["preprocess.resize_size=110", "preprocess.crop_size=96"]  # 2 cores: small crops


@pytest.fixture(scope="module")
def convnext_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "convnext_tiny.safetensors"
    return torchvision_weights(path, "convnext_tiny", seed=4321)


def _reference(config, uris: list[str], weights: Path) -> dict[str, np.ndarray]:
    """Each good image's vector from plain torch in one process, fp32: the final Linear's input."""
    model = reference_model(config, weights)
    seen = {}
    FINAL_LINEAR[config.model.name](model).register_forward_hook(lambda _m, args, _o: seen.update(x=args[0]))
    expected = {}
    for uri, x in reference_inputs(config, uris):
        with torch.inference_mode():
            model(x)
        expected[uri] = seen["x"][0].numpy()
    return expected


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _embed_config(make_config, tmp_path, images, name, weights, precision, *extra):
    items = {
        "output.uri": str(tmp_path / f"{name}-{precision}"),
        "model.name": name,
        "model.weights": str(weights),
        "model.task": "embed",
        "inference.precision": precision,
    }
    items.update(dict(item.split("=", 1) for item in extra))
    return make_config(images, **{key.replace(".", "__"): value for key, value in items.items()})


@pytest.mark.slow
class TestEmbedJob:
    @pytest.mark.parametrize(
        ("name", "precision", "least"),
        [
            ("resnet18", "fp32", 0.9999),
            ("resnet18", "bf16", 0.99),
            ("convnext_tiny", "fp32", 0.9999),
            ("convnext_tiny", "bf16", 0.99),
        ],
    )
    def test_every_row_matches_single_process_torch(
        self, ray_session, sample_images, make_config, weights_file, convnext_weights, tmp_path,
        name, precision, least,
    ):  # fmt: skip
        """Each good row's vector has cosine >= ``least`` with plain torch's on the same weights and crop."""
        weights = weights_file if name == "resnet18" else convnext_weights
        extra = CONVNEXT_CROP if name == "convnext_tiny" else []
        config = _embed_config(make_config, tmp_path, sample_images, name, weights, precision, *extra)
        summary = run_job(config)
        table = pq.read_table(Path(config.output.uri) / DATA_DIR)
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIMS[name])
        assert not CLASSIFY_COLUMNS & set(table.schema.names)
        rows = {row["uri"]: row for row in table.to_pylist()}
        expected = _reference(config, list_inputs(config.input, config.storage).uris, weights)
        assert len(expected) == summary.succeeded == 40
        cosines = {uri: _cosine(np.array(rows[uri]["embedding"]), vector) for uri, vector in expected.items()}
        worst = min(cosines.values())
        print(f"{name} {precision}: min cosine {worst:.6f} over {len(cosines)} rows")
        assert worst >= least, min(cosines, key=cosines.__getitem__)
        failed = [row for row in rows.values() if row["status"] == "failed"]
        assert len(failed) == 3
        assert all(row["reason"] and row["embedding"] is None for row in failed)

    def test_normalized_float16_rows_and_the_manifest(
        self, ray_session, sample_images, make_config, tmp_path, capsys
    ):
        """normalize gives unit rows stored as float16; the manifest and summary name the task."""
        config = make_config(
            sample_images,
            model__task="embed",
            model__normalize="true",
            model__embedding_dtype="float16",
            model__labels=str(tmp_path / "no-labels.txt"),  # never read for embed
        )
        summary = run_job(config)
        table = pq.read_table(Path(config.output.uri) / DATA_DIR)
        assert table.schema.field("embedding").type == pa.list_(pa.float16(), 512)
        ok = table.filter(pa.compute.equal(table.column("status"), "ok"))
        vectors = np.array(ok.column("embedding").to_pylist(), dtype=np.float32)
        assert vectors.shape == (40, 512)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
        manifest = OutputLocation.open(config.output.uri, config.storage).read_json(MANIFEST)
        assert manifest["model"]["task"] == "embed"
        assert manifest["model"]["embedding"] == {"dim": 512, "dtype": "float16", "normalized": True}
        assert manifest["config_hash"] == config.config_hash(manifest["model"]["sha256"])
        assert summary.task == "embed"
        assert "embed" in summary.render()
        # A real embed output compared with itself: every cosine 1 (was a DuckDB binder error on `label`).
        capsys.readouterr()
        assert main(["compare", config.output.uri, config.output.uri, "--json", "--min-agreement", "1"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert (doc["task"], doc["cosine"]["rows"], doc["agreement"]) == ("embed", 40, 1.0)
        assert doc["cosine"]["min"] == pytest.approx(1.0, abs=1e-9)
        assert doc["neighbours"] == {"sample": 40, "agreement": 1.0}
