"""models: several models over one decode: each model's config and hash, and what is refused."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.config.multi import model_configs
from pipeline.errors import ConfigError

BASE = ["input.uri=/data/images", "output.uri=/data/out"]
TWO = (
    "models=[{name: resnet18, random_init: true, output: current},"
    " {name: resnet50, random_init: true, output: candidate, precision: fp32, top_k: 3}]"
)


def test_each_model_hashes_as_its_single_model_run():
    """A model's output in a models: run carries the hash its own single-model run has."""
    multi = load_config(None, [*BASE, TWO], environ={})
    (first, one), (second, two) = model_configs(multi)
    alone18 = load_config(None, [*BASE, "model.name=resnet18", "model.random_init=true"], environ={})
    alone50 = load_config(
        None,
        [*BASE, "model.name=resnet50", "model.random_init=true", "model.top_k=3", "inference.precision=fp32"],
        environ={},
    )
    assert (first, second) == ("current", "candidate")
    assert (one.output.uri, two.output.uri) == ("/data/out/current", "/data/out/candidate")
    assert one.config_hash("w18") == alone18.config_hash("w18")
    assert two.config_hash("w50") == alone50.config_hash("w50")
    assert multi.config_hash("w") not in {one.config_hash("w"), two.config_hash("w")}


def test_a_single_model_config_hashes_as_before_models_existed():
    """models: left out keeps the hash every earlier output was committed with."""
    config = load_config(None, [*BASE, "model.random_init=true"], environ={})
    assert config.config_hash() == "f05bc9fc1bb4396388dc94c968db3dd326152fbfec230df4170d8a5627f51e79"
    assert model_configs(config) == [("", config)]


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        (
            (
                "models=[{name: resnet18, random_init: true, output: a},"
                " {name: resnet50, random_init: true, output: a}]"
            ),
            "models[1].output",
            "a",
        ),
        ("models=[{name: resnet18, output: a}]", "models[0].weights", None),
        ("models=[{name: resnet18, random_init: true, output: a}]", "model", "resnet18"),
        ("models=[{name: resnet18, random_init: true, output: a}]", "output.previous", "/data/night-1"),
    ],
    ids=["duplicate-output", "no-weights", "model-and-models", "incremental"],
)
def test_bad_models_config_names_the_key_and_value(override, key, value):
    """A bad models: config stops before any work, naming the key and the value."""
    extra = {"model": ["model.name=resnet18"], "output.previous": ["output.previous=/data/night-1"]}
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*BASE, override, *extra.get(key, [])], environ={})
    assert (caught.value.key, caught.value.value) == (key, value)


def test_an_output_name_is_one_folder():
    """A models[].output that is not one plain folder name is refused."""
    with pytest.raises(ConfigError, match=r"models.*\.\./up"):
        load_config(None, [*BASE, "models=[{name: resnet18, random_init: true, output: ../up}]"], environ={})


def test_plan_names_each_model_and_its_output(tmp_path, sample_images):
    """`pipeline plan` of a models: run lists every model with its output folder, and writes nothing."""
    from pipeline.run.preflight import check_run

    config = load_config(
        None, [f"input.uri={sample_images}", f"output.uri={tmp_path / 'out'}", TWO], environ={}
    )
    verdict = check_run(config)
    assert verdict.action == "new"
    assert [(name, spec.name) for name, spec in verdict.models] == [
        ("current", "resnet18"),
        ("candidate", "resnet50"),
    ]
    lines = "\n".join(verdict.lines(config))
    assert f"output {tmp_path / 'out'}/candidate" in lines
    assert [m["output"] for m in verdict.as_dict()["models"]] == ["current", "candidate"]
    assert not (tmp_path / "out").exists()
