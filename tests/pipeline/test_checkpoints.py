"""Checkpoints as people save them: wrapper prefixes, training-loop dicts, the format read from the
bytes, headless backbones for ``embed``, and a short message when the head differs.

Each test saves its own weights (a random-init ResNet-18 with 10 classes) the way a training
script would, and loads them through the job's own path (``resolve_spec``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog
import torch
import torchvision
from safetensors.torch import save as safetensors_bytes
from torch_oracle import reference_inputs

from pipeline.cli import main
from pipeline.compute.model import build_model, resolve_spec
from pipeline.config import ModelConfig, PreprocessConfig
from pipeline.errors import ModelError
from pipeline.inputs.listing import list_inputs
from pipeline.run.job import run_job

CLASSES = 10
SHORT = 600  # characters: a message a person reads, not a key list (it was 6,899)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """The state dict of a random-init ResNet-18 with a 10-class head."""
    torch.manual_seed(7)
    return torchvision.models.resnet18(num_classes=CLASSES).state_dict()


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _resolve(path: Path, task: str = "classify", classes: int = CLASSES) -> dict[str, torch.Tensor]:
    config = ModelConfig(name="resnet18", weights=str(path), num_classes=classes, task=task)
    spec, loaded = resolve_spec(config, PreprocessConfig())
    assert spec.weights_uri == str(path)
    assert loaded is not None
    return loaded


def _same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


class TestWrappers:
    def test_a_ddp_module_prefix_is_stripped_and_logged(self, state, tmp_path):
        """Every key `module.`-prefixed (DistributedDataParallel): stripped, said once in the log."""
        path = _save(tmp_path / "ddp.pt", {f"module.{key}": value for key, value in state.items()})
        with structlog.testing.capture_logs() as logs:
            _same(_resolve(path), state)
        [line] = [line for line in logs if "prefix" in line["event"]]
        assert (line["prefixes"], line["saved_by"]) == (["module."], ["DistributedDataParallel"])

    def test_a_lightning_checkpoint_gives_its_state_dict_without_the_model_prefix(self, state, tmp_path):
        """Lightning: {"state_dict": {"model.<key>": ...}, "epoch": ...} gives its tensors, named plainly."""
        checkpoint = {
            "epoch": 3,
            "global_step": 70,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{key}": value for key, value in state.items()},
            "lr_schedulers": [],
        }
        with structlog.testing.capture_logs() as logs:
            _same(_resolve(_save(tmp_path / "epoch=3.ckpt", checkpoint)), state)
        events = {line["event"]: line for line in logs}
        assert events["weights taken from a training checkpoint"]["key"] == "state_dict"
        assert events["weights' keys had a wrapper's prefix: stripped"]["prefixes"] == ["model."]


class TestTrainingLoopDicts:
    def test_the_model_state_dict_of_a_training_loop_checkpoint_is_taken(self, state, tmp_path):
        """{"epoch", "model_state_dict", "optimizer_state_dict", "loss"}: the model's tensors are used."""
        model = torchvision.models.resnet18(num_classes=CLASSES)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        checkpoint = {
            "epoch": 5,
            "model_state_dict": state,
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": 0.25,
        }
        _same(_resolve(_save(tmp_path / "checkpoint.pth", checkpoint)), state)

    def test_two_candidates_are_refused_naming_what_the_file_holds(self, state, tmp_path):
        """ "model" and "state_dict" both hold tensors: which is meant is not guessed; the keys are listed."""
        path = _save(tmp_path / "two.pth", {"model": state, "state_dict": state, "epoch": 1})
        with pytest.raises(ModelError) as refused:
            _resolve(path)
        message = str(refused.value)
        assert f"model ({len(state)} tensors), state_dict ({len(state)} tensors), epoch (int)" in message
        assert "both model and state_dict hold tensors" in message

    def test_no_candidate_is_refused_naming_what_the_file_holds(self, state, tmp_path):
        """Tensors under a key no training loop convention names: the keys are listed, with the fix."""
        path = _save(tmp_path / "odd.pth", {"weights": state, "epoch": 1})
        with pytest.raises(ModelError) as refused:
            _resolve(path)
        message = str(refused.value)
        assert f"weights ({len(state)} tensors), epoch (int)" in message
        assert "none of model, model_state_dict, state_dict does" in message
        assert "torch.save(checkpoint['model'], 'weights.pth')" in message


class TestFormatFromContent:
    def test_safetensors_saved_as_bin_is_read_as_safetensors(self, state, tmp_path):
        """The bytes say safetensors, the name says .bin: the bytes win."""
        path = tmp_path / "model.bin"
        path.write_bytes(safetensors_bytes({key: value.contiguous() for key, value in state.items()}))
        _same(_resolve(path), state)

    def test_a_torch_file_named_safetensors_is_read_as_torch(self, state, tmp_path):
        """A torch.save file under a .safetensors name: read as what it is."""
        _same(_resolve(_save(tmp_path / "model.safetensors", state)), state)

    def test_bytes_of_neither_format_are_refused_without_torchs_unsafe_advice(self, tmp_path):
        """Neither format: said in our words; nothing tells the user to pass weights_only=False."""
        path = tmp_path / "model.pt"
        path.write_bytes(os.urandom(4096))
        with pytest.raises(ModelError) as refused:
            _resolve(path)
        message = str(refused.value)
        assert "neither a safetensors file nor a torch file" in message
        assert "False" not in message

    def test_an_object_beside_the_tensors_is_refused_without_torchs_unsafe_advice(self, state, tmp_path):
        """A checkpoint that pickles a non-tensor object: refused, the object named, no weights_only=False."""
        path = _save(tmp_path / "args.pth", {"model": state, "args": torch.nn.Identity()})
        with pytest.raises(ModelError) as refused:
            _resolve(path)
        message = str(refused.value)
        assert "torch.nn.modules.linear.Identity" in message
        assert "False" not in message
        assert "\x1b[" not in message


class TestHeads:
    def test_a_headless_backbone_is_accepted_to_embed(self, state, tmp_path):
        """fc replaced by Identity before saving (no fc.* keys): embed loads it; its vector is 512 long."""
        headless = {key: value for key, value in state.items() if not key.startswith("fc.")}
        path = _save(tmp_path / "backbone.pt", headless)
        loaded = _resolve(path, task="embed")
        model = build_model("resnet18", CLASSES, loaded, "embed")
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 512)

    def test_a_headless_backbone_to_classify_is_refused_pointing_at_embed(self, state, tmp_path):
        """To classify, the head is needed: a short message naming fc.weight and pointing at embed."""
        headless = {key: value for key, value in state.items() if not key.startswith("fc.")}
        with pytest.raises(ModelError) as refused:
            _resolve(_save(tmp_path / "backbone.pt", headless))
        message = str(refused.value)
        assert len(message) < SHORT, message
        assert "2 missing (fc.weight, fc.bias)" in message
        assert "model.task: embed" in message

    def test_a_changed_head_gets_a_short_message_naming_the_first_keys(self, state, tmp_path):
        """fc = Sequential(Dropout, Linear): a few lines naming fc.weight and fc.1.weight and what to do."""
        model = torchvision.models.resnet18(num_classes=CLASSES)
        model.fc = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(512, CLASSES))
        path = _save(tmp_path / "dropout-head.pt", model.state_dict())
        with pytest.raises(ModelError) as refused:
            _resolve(path)
        message = str(refused.value)
        assert len(message) < SHORT, message
        assert "2 missing (fc.weight, fc.bias); 2 unexpected (fc.1.weight, fc.1.bias)" in message
        assert "only the classifier head differs" in message.lower()
        assert _resolve(path, task="embed")  # embedding never uses the head

    def test_a_head_of_another_size_names_the_class_count(self, state, tmp_path):
        """10 classes in the file, model.num_classes 1000: the message says which number to set."""
        with pytest.raises(ModelError) as refused:
            _resolve(_save(tmp_path / "ten.pt", state), classes=1000)
        message = str(refused.value)
        assert "fc.weight: 10x512 in the file, 1000x512 in the model" in message
        assert "set model.num_classes to 10" in message

    def test_the_command_says_it_in_one_short_line(self, state, tmp_path, sample_images, capfd):
        """`pipeline run` with a changed head: exit 2, one short line, no traceback."""
        model = torchvision.models.resnet18(num_classes=CLASSES)
        model.fc = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(512, CLASSES))
        path = _save(tmp_path / "dropout-head.pt", model.state_dict())
        settings = [f"input.uri={sample_images}", f"output.uri={tmp_path / 'out'}", "model.name=resnet18"]
        settings += [f"model.weights={path}", f"model.num_classes={CLASSES}", "logging.format=console"]
        assert main(["run", *(arg for item in settings for arg in ("--set", item))]) == 2
        last = capfd.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: checkpoint "), last
        assert len(last) < SHORT + 20, last
        assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.slow
def test_a_lightning_checkpoint_classifies_as_its_plain_weights(ray_session, state, tmp_path, make_config):
    """A run on a Lightning checkpoint (prefixed keys in a training dict) gives plain torch's top-1."""
    from pipeline.cli import samples

    images = tmp_path / "images"
    samples.make_images(images, 6, seed=9, sizes=((80, 64),), broken=False)
    checkpoint = {"epoch": 1, "state_dict": {f"model.{key}": value for key, value in state.items()}}
    path = _save(tmp_path / "last.ckpt", checkpoint)
    config = make_config(images, model__weights=str(path), model__num_classes=CLASSES, model__top_k=3)
    summary = run_job(config)
    assert summary.succeeded == 6
    reference = torchvision.models.resnet18(num_classes=CLASSES)
    reference.load_state_dict(state)
    reference.eval()
    import pyarrow.parquet as pq

    rows = {row["uri"]: row for row in pq.read_table(Path(config.output.uri) / "data").to_pylist()}
    for uri, x in reference_inputs(config, list_inputs(config.input, config.storage).uris):
        with torch.inference_mode():
            expected = int(reference(x).argmax())
        assert rows[uri]["top_k_ids"][0] == expected, uri
