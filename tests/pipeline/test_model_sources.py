"""Models as users have them (pipeline.compute.sources): timm, Hugging Face, OpenCLIP, exported programs.

Each source's tiny model is built with random weights and saved in its library's own format
(tests/helpers/tiny_models.py), and compared with the library's own reference inference on the
same decoded images: the pixels the model receives (so a wrong mean, std, resize or crop shows),
then the outputs (so a missing or wrong head shows), on the driver and through a real run.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import tiny_models
from PIL import Image

from pipeline.cli import samples
from pipeline.cli.app import main
from pipeline.compute import sources
from pipeline.compute.decode import decode
from pipeline.compute.inference import InferenceSettings, Predictor
from pipeline.config import load_config
from pipeline.errors import ConfigError, ModelError
from pipeline.outputs.layout import DATA_DIR, MANIFEST, OutputLocation
from pipeline.run.job import run_job
from pipeline.run.placement import decode_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config

IMAGES = 12
SIZES = ((48, 40), (40, 48), (64, 48), (48, 48), (56, 44), (44, 60))
PIXEL_TOLERANCE = 1e-4  # the model's input, pipeline against library: float rounding only
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dozen photo-like PNGs of several sizes and aspect ratios (lossless: both sides decode alike)."""
    root = tmp_path_factory.mktemp("source-images")
    rng = np.random.default_rng(29)
    for index in range(IMAGES):
        samples.photo_like(rng, *SIZES[index % len(SIZES)]).save(root / f"{index:02d}.png")
    return root


def _decoded(folder: Path) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.png"))]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every source's tiny model, saved once for the module."""
    root = tmp_path_factory.mktemp("source-models")
    (root / "classify").mkdir()
    (root / "embed").mkdir()
    return {
        "timm": tiny_models.timm_weights(root),
        "huggingface": tiny_models.huggingface_dir(root),
        "open_clip": tiny_models.open_clip_dir(root),
        "clip_labels": tiny_models.labels_file(root, tiny_models.CLIP_LABELS),
        "exported-classify": tiny_models.exported_program(root / "classify", tiny_models.small_net(7)),
        "exported-embed": tiny_models.exported_program(root / "embed", tiny_models.small_net(24, seed=8)),
    }


@dataclass(frozen=True)
class Case:
    """One source and task: its config keys, and the library's own preprocessing and forward pass."""

    source: str
    task: str

    @property
    def id(self) -> str:
        """The test id."""
        return f"{self.source}-{self.task}"

    def overrides(self, models: dict[str, Path]) -> dict[str, Any]:
        """The ``model:`` and ``preprocess:`` keys of this case."""
        keys: dict[str, Any] = {"model__source": self.source, "model__task": self.task}
        if self.source == "timm":
            keys |= {
                "model__name": tiny_models.TIMM_MODEL,
                "model__num_classes": tiny_models.TIMM_CLASSES,
                "model__weights": models["timm"],
            }
        elif self.source == "huggingface":
            keys |= {"model__weights": models["huggingface"]}
        elif self.source == "open_clip":
            keys |= {"model__name": "tiny-clip", "model__weights": models["open_clip"]}
            keys |= {
                "model__labels": models["clip_labels"],
                "model__prompt_template": "a blurry photo of a {}.",
            }
        else:
            keys |= {"model__name": "small-net", "model__weights": models[f"exported-{self.task}"]}
            keys |= {
                f"preprocess__{key}": json.dumps(value) if isinstance(value, tuple) else value
                for key, value in tiny_models.EXPORTED_PREPROCESS.items()
            }
        return keys

    def reference(
        self, models: dict[str, Path], pictures: list[Image.Image]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The library's own model input for ``pictures`` and its outputs: class probabilities or vectors."""
        with torch.inference_mode():
            pixels, output = getattr(self, f"_{self.source}")(models, pictures)
        return pixels, output if self.task == "embed" else output.softmax(dim=1)

    def _timm(
        self, models: dict[str, Path], pictures: list[Image.Image]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import timm
        from safetensors.torch import load_file
        from timm.data import create_transform, resolve_model_data_config

        model = timm.create_model(
            tiny_models.TIMM_MODEL, pretrained=False, num_classes=tiny_models.TIMM_CLASSES
        )
        model.load_state_dict(load_file(models["timm"]))
        model.eval()
        transform = create_transform(**resolve_model_data_config(model))
        pixels = torch.stack([transform(picture) for picture in pictures])
        if self.task == "embed":
            return pixels, model.forward_head(model.forward_features(pixels), pre_logits=True)
        return pixels, model(pixels)

    def _huggingface(
        self, models: dict[str, Path], pictures: list[Image.Image]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

        folder = models["huggingface"]
        processor = AutoImageProcessor.from_pretrained(folder, backend="pil")  # PIL's resampling, as ours
        pixels = processor(pictures, return_tensors="pt")["pixel_values"]
        if self.task == "embed":  # what ViT's classifier receives: the class token after the last norm
            backbone = AutoModel.from_pretrained(folder, add_pooling_layer=False).eval()
            return pixels, backbone(pixel_values=pixels).last_hidden_state[:, 0]
        return pixels, AutoModelForImageClassification.from_pretrained(folder).eval()(
            pixel_values=pixels
        ).logits

    def _open_clip(
        self, models: dict[str, Path], pictures: list[Image.Image]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import open_clip

        where = f"local-dir:{models['open_clip']}"  # OpenCLIP loads its own saved weights
        model, _, preprocess = open_clip.create_model_and_transforms(where)
        model.eval()
        pixels = torch.stack([preprocess(picture) for picture in pictures])
        if self.task == "embed":
            return pixels, model.encode_image(pixels)
        text = open_clip.get_tokenizer(where)(
            [f"a blurry photo of a {label}." for label in tiny_models.CLIP_LABELS]
        )
        image_features, text_features, scale = model(pixels, text)
        return pixels, scale * image_features @ text_features.T  # OpenCLIP's own logits

    def _exported(
        self, models: dict[str, Path], pictures: list[Image.Image]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import transforms

        prep = tiny_models.EXPORTED_PREPROCESS
        transform = transforms.Compose(
            [
                transforms.Resize(prep["resize_size"]),
                transforms.CenterCrop(prep["crop_size"]),
                transforms.ToTensor(),
                transforms.Normalize(prep["mean"], prep["std"]),
            ]
        )
        pixels = torch.stack([transform(picture) for picture in pictures])
        net = tiny_models.small_net(7) if self.task == "classify" else tiny_models.small_net(24, seed=8)
        return pixels, net(pixels)  # the eager model the program was exported from


# The task each source's real run (TestRun) does not do: together every source meets both tasks.
RUNS = [
    Case("timm", "classify"),
    Case("huggingface", "classify"),
    Case("open_clip", "classify"),
    Case("exported", "embed"),
]
CASES = [Case(case.source, "embed" if case.task == "classify" else "classify") for case in RUNS]


def _config(local_config: Callable[..., Config], images: Path, out: Path, **keys: Any) -> Config:
    return local_config(images, out, **keys)


def _predictor(config: Config, precision: str = "fp32") -> tuple[Predictor, np.ndarray]:
    """The source's model as an actor runs it, and the pipeline's decoded crops of the inputs."""
    loaded = sources.resolve(config.model, config.preprocess, config.storage)
    settings = decode_settings(config, loaded.spec)
    paths = sorted(Path(config.input.uri).glob("*.png"))
    crops = np.stack([decode(path.read_bytes(), settings).crop for path in paths])  # type: ignore[misc]
    predictor = Predictor(loaded.spec, loaded.payload, InferenceSettings(precision=precision), top_k=3)
    return predictor, crops


def _cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return (left * right).sum(1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))


class TestAgainstTheLibrary:
    @pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
    def test_same_pixels_and_outputs_as_the_library(self, case, images, models, local_config, tmp_path):
        """The model gets the library's own input tensor; fp32 top-1 all agree, scores or cosines match."""
        config = _config(local_config, images, tmp_path / "out", **case.overrides(models))
        predictor, crops = _predictor(config)
        pixels, expected = case.reference(models, _decoded(images))
        ours = predictor.model_input(torch.from_numpy(crops))
        assert ours.shape == pixels.shape
        assert float((ours - pixels).abs().max()) <= PIXEL_TOLERANCE
        if case.task == "embed":
            (vectors,) = predictor.predict(crops)
            assert vectors.shape == tuple(expected.shape)
            assert _cosines(vectors, expected.numpy()).min() >= 0.999
            return
        ids, scores = predictor.predict(crops)
        top = expected.topk(3, dim=1)
        assert (ids[:, 0] == top.indices[:, 0].numpy()).all()
        np.testing.assert_allclose(scores, top.values.numpy(), atol=SCORE_TOLERANCE)

    @pytest.mark.parametrize("source", ["timm", "huggingface", "open_clip", "exported"])
    def test_bf16_agrees_with_fp32(self, source, images, models, local_config, tmp_path):
        """bf16 autocast gives the fp32 top-1 on at least 98% of the images (flipped copies included)."""
        keys = Case(source, "classify").overrides(models)
        if source == "timm":  # its 160-pixel crop would be most of the test's time; the model takes any size
            keys |= {"preprocess__resize_size": 48, "preprocess__crop_size": 40}
        config = _config(local_config, images, tmp_path / "out", **keys)
        fp32, crops = _predictor(config, "fp32")
        bf16, _ = _predictor(config, "bf16")
        crops = np.concatenate([crops, crops[:, ::-1], crops[:, :, ::-1], crops[:, ::-1, ::-1]])
        agreement = float((fp32.predict(crops)[0][:, 0] == bf16.predict(crops)[0][:, 0]).mean())
        assert agreement >= 0.98, agreement


@pytest.fixture(scope="module", params=RUNS, ids=lambda case: case.id)
def run(request, ray_session, images, models, local_config, tmp_path_factory) -> tuple[Case, Config, dict]:
    """One real run per source over the dozen images, fp32, in-process on the shared Ray cluster."""
    case: Case = request.param
    out = tmp_path_factory.mktemp(f"run-{case.id}") / "out"
    config = _config(local_config, images, out, **case.overrides(models), model__top_k=3)
    summary = run_job(config)
    assert summary.status == "succeeded"
    return case, config, {row["uri"]: row for row in pq.read_table(out / DATA_DIR).to_pylist()}


@pytest.mark.slow
class TestRun:
    def test_rows_match_the_library(self, run, models, images):
        """Every row of a real run agrees with the library's own inference: top-1, scores, vectors."""
        case, _, rows = run
        pictures, paths = _decoded(images), sorted(images.glob("*.png"))
        _, expected = case.reference(models, pictures)
        assert len(rows) == IMAGES
        ordered = [rows[str(path)] for path in paths]
        assert all(row["status"] == "ok" for row in ordered)
        if case.task == "embed":
            vectors = np.array([row["embedding"] for row in ordered], dtype=np.float32)
            assert _cosines(vectors, expected.numpy()).min() >= 0.999
            return
        top = expected.topk(3, dim=1)
        assert [row["top_k_ids"][0] for row in ordered] == top.indices[:, 0].tolist()
        np.testing.assert_allclose(
            [row["top_k_scores"] for row in ordered], top.values.numpy(), atol=SCORE_TOLERANCE
        )
        if case.source == "open_clip":  # zero-shot: labels are the prompts' labels
            assert {row["label"] for row in ordered} <= set(tiny_models.CLIP_LABELS)

    def test_manifest_names_source_files_and_versions(self, run, models):
        """The manifest records the source, every file read with its sha256, the library versions."""
        case, config, _ = run
        manifest = OutputLocation.open(config.output.uri, config.storage).read_json(MANIFEST)
        entry = manifest["model"]
        assert entry["source"] == case.source
        library = {"timm": "timm", "huggingface": "transformers", "open_clip": "open_clip_torch"}.get(
            case.source
        )
        assert "torch" in entry["versions"]
        assert library is None or library in entry["versions"]
        weights = Path(str(config.model.weights))
        on_disk = sorted(weights.iterdir()) if weights.is_dir() else [weights]
        read = {
            Path(str(weights), item["path"]) if weights.is_dir() else Path(item["path"]): item["sha256"]
            for item in entry["files"]
        }
        assert read  # every file read is named, with its bytes' checksum
        for path, digest in read.items():
            assert path in on_disk
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert manifest["config_hash"] == config.config_hash(entry["sha256"])
        assert entry["preprocessing"]["crop_size"] == config.preprocess.crop_size or case.source != "exported"


class _WritesAFile:
    """Unpickling this creates ``marker``: what a hostile pickle could do, and must never get to."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


class TestHostile:
    def test_huggingface_pickle_bin_is_refused_unread(self, tmp_path):
        """A save_pretrained folder with only a pickled pytorch_model.bin is refused; nothing is unpickled."""
        folder, marker = tmp_path / "hf", tmp_path / "pwned"
        folder.mkdir()
        (folder / "config.json").write_text(
            json.dumps({"model_type": "vit", "architectures": ["ViTForImageClassification"]})
        )
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_WritesAFile(marker), protocol=2))
        config = load_config(
            None, ["input.uri=/x", "model.source=huggingface", f"model.weights={folder}"], environ={}
        )
        with pytest.raises(ModelError, match=r"only pickled weights \(pytorch_model.bin\).*safetensors"):
            sources.resolve(config.model, config.preprocess)
        assert not marker.exists()

    def test_pickle_beside_safetensors_is_never_loaded(self, models, tmp_path):
        """A hostile .bin beside the safetensors is not read, not copied to the actor, not run."""
        import shutil

        folder, marker = tmp_path / "hf", tmp_path / "pwned"
        shutil.copytree(models["huggingface"], folder)
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_WritesAFile(marker), protocol=2))
        config = load_config(
            None, ["input.uri=/x", "model.source=huggingface", f"model.weights={folder}"], environ={}
        )
        loaded = sources.resolve(config.model, config.preprocess)
        assert "pytorch_model.bin" not in dict(loaded.spec.files)
        loaded.build()
        assert not marker.exists()

    def test_timm_torch_file_holding_a_pickled_object_is_refused(self, tmp_path):
        """A timm weights file that torch.save made of an object is refused by weights_only; nothing runs."""
        path, marker = tmp_path / "weights.bin", tmp_path / "pwned"
        torch.save({"model": _WritesAFile(marker)}, path)
        keys = [
            f"model.weights={path}",
            "model.source=timm",
            f"model.name={tiny_models.TIMM_MODEL}",
            "input.uri=/x",
        ]
        config = load_config(None, keys, environ={})
        with pytest.raises(ModelError, match="weights_only"):
            sources.resolve(config.model, config.preprocess)
        assert not marker.exists()

    def test_config_naming_custom_code_is_refused(self, models, tmp_path):
        """A config.json with auto_map (code for trust_remote_code) is refused; its module never runs."""
        import shutil

        folder, marker = tmp_path / "hf", tmp_path / "pwned"
        shutil.copytree(models["huggingface"], folder)
        config_json = json.loads((folder / "config.json").read_text())
        config_json["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
        (folder / "config.json").write_text(json.dumps(config_json))
        (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
        config = load_config(
            None, ["input.uri=/x", "model.source=huggingface", f"model.weights={folder}"], environ={}
        )
        with pytest.raises(ModelError, match="trust_remote_code"):
            sources.resolve(config.model, config.preprocess)
        assert not marker.exists()

    def test_exported_program_not_matching_its_pin_is_not_loaded(self, models, tmp_path):
        """An exported program runs code when loaded: a file other than model.sha256 pins is refused first."""
        path = tmp_path / "net.pt2"
        path.write_bytes(models["exported-classify"].read_bytes() + b"tampered")
        pin = hashlib.sha256(models["exported-classify"].read_bytes()).hexdigest()
        keys = ["input.uri=/x", "model.source=exported", f"model.weights={path}", f"model.sha256={pin}"]
        keys += [
            "preprocess.resize_size=40",
            "preprocess.crop_size=32",
            "preprocess.mean=[0.5,0.5,0.5]",
            "preprocess.std=[0.2,0.2,0.2]",
        ]
        config = load_config(None, keys, environ={})
        with pytest.raises(ModelError, match=r"config key 'model\.sha256'.*refusing to load"):
            sources.read_weights(config.model, config.storage)

    def test_directory_pin_covers_every_file_read(self, models, tmp_path):
        """model.sha256 of a directory is the documented digest of its files; one changed byte is refused."""
        import shutil

        folder = tmp_path / "hf"
        shutil.copytree(models["huggingface"], folder)
        lines = "".join(
            f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n"
            for name in ("config.json", "model.safetensors", "preprocessor_config.json")
        )
        pin = hashlib.sha256(lines.encode()).hexdigest()
        keys = ["input.uri=/x", "model.source=huggingface", f"model.weights={folder}", f"model.sha256={pin}"]
        config = load_config(None, keys, environ={})
        assert sources.read_weights(config.model).sha256 == pin
        (folder / "preprocessor_config.json").write_text(
            (folder / "preprocessor_config.json").read_text() + " "
        )
        with pytest.raises(ModelError, match=r"model\.sha256"):
            sources.read_weights(config.model)


class TestConfig:
    def test_missing_library_names_the_extra(self, monkeypatch, capsys):
        """A source whose library is not installed is a config error naming the extra; models says so too."""
        monkeypatch.setitem(sys.modules, "open_clip", None)  # what an environment without it imports
        config = load_config(
            None,
            ["input.uri=/x", "model.source=open_clip", "model.task=embed", "model.random_init=true"],
            environ={},
        )
        with pytest.raises(ConfigError, match=r"model.source.*pip install 'pipeline\[open_clip\]'"):
            sources.check_model(config.model)
        assert main(["models", "--source", "open_clip"]) == 0
        assert "pip install 'pipeline[open_clip]'" in capsys.readouterr().out

    def test_models_lists_each_source(self, capsys):
        """pipeline models lists what each installed source offers, under the source's name."""
        assert main(["models"]) == 0
        out = capsys.readouterr().out
        sections = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
        assert set(sections) == set(sources.SOURCES)
        assert "  resnet50" in out.split("timm")[0]  # torchvision's architectures first
        assert f"  {tiny_models.TIMM_MODEL}" in out
        assert "  ViT-B-32" in out

    @pytest.mark.parametrize(
        ("keys", "named"),
        [
            (["model.source=exported", "model.weights=/m.pt2"], "preprocess.resize_size"),
            (["model.source=open_clip", "model.random_init=true"], "model.labels"),
            (["model.source=huggingface", "model.random_init=true"], "model.random_init"),
            (["model.source=timm", "model.prompt_template=no placeholder"], "prompt_template"),
        ],
    )
    def test_bad_source_config_names_the_key(self, keys, named):
        """What a source needs from the other keys is refused at load, naming the key."""
        with pytest.raises(ConfigError, match=named):
            load_config(None, ["input.uri=/x", *keys], environ={})

    def test_bench_runs_the_source_and_its_saved_model(self, models, images, tmp_path):
        """pipeline bench --source: the source's model as the job loads it, random only without weights."""
        from pipeline.cli import bench
        from pipeline.cli.app import build_parser

        argv = [
            "bench",
            "--source",
            "huggingface",
            "--model",
            "vit",
            "--set",
            f"model.weights={models['huggingface']}",
        ]
        overrides = bench._overrides(images, tmp_path, build_parser().parse_args(argv), "fp32")
        config = bench._config(overrides)
        assert (config.model.source, config.model.random_init) == ("huggingface", False)
        predictor = bench.model_predictor(config, "fp32")
        assert predictor.spec.labels == tiny_models.HF_LABELS  # the folder's model, not a random init
        timm = bench._config(
            bench._overrides(
                images, tmp_path, build_parser().parse_args(["bench", "--source", "timm"]), "fp32"
            )
        )
        assert (timm.model.source, timm.model.name, timm.model.random_init) == ("timm", "resnet50", True)

    def test_random_init_open_clip_is_the_same_model_on_every_actor(self):
        """A random-init OpenCLIP model has no payload, so every actor seeds the same weights (the bench's
        fp32 reference once compared two different random models: cosine -0.1)."""
        keys = ["input.uri=/x", "model.source=open_clip", "model.name=ViT-B-32", "model.task=embed"]
        config = load_config(None, [*keys, "model.random_init=true"], environ={})
        loaded = sources.resolve(config.model, config.preprocess)
        assert loaded.payload is None
        assert loaded.spec.random_init

    def test_hash_is_unchanged_for_torchvision_and_covers_the_source(self):
        """Existing configs hash as before; another source (same name and weights) hashes differently."""
        base = ["input.uri=/x", "model.name=resnet18", "model.weights=/w.safetensors"]
        plain = load_config(None, base, environ={}).config_hash("ab" * 32)
        explicit = load_config(None, [*base, "model.source=torchvision"], environ={}).config_hash("ab" * 32)
        timm = load_config(None, [*base, "model.source=timm"], environ={}).config_hash("ab" * 32)
        assert plain == explicit
        assert timm != plain

    def test_hub_name_resolves_from_the_local_cache_only(self, models, tmp_path, monkeypatch):
        """A hub id loads from the local cache, offline; an uncached one says how to pre-fetch it."""
        import shutil

        cache = tmp_path / "hub"
        revision = "0" * 40
        snapshot = cache / "models--tiny--vit" / "snapshots" / revision
        shutil.copytree(models["huggingface"], snapshot)
        (cache / "models--tiny--vit" / "refs").mkdir()
        (cache / "models--tiny--vit" / "refs" / "main").write_text(revision)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        config = load_config(
            None, ["input.uri=/x", "model.source=huggingface", "model.name=tiny/vit"], environ={}
        )
        loaded = sources.resolve(config.model, config.preprocess)
        assert loaded.spec.labels == tiny_models.HF_LABELS
        assert loaded.spec.weights_uri == "hf-cache:tiny/vit"
        other = load_config(
            None, ["input.uri=/x", "model.source=huggingface", "model.name=tiny/absent"], environ={}
        )
        with pytest.raises(ModelError, match=r"not in the local cache.*hf download tiny/absent"):
            sources.read_weights(other.model)
