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


@pytest.mark.parametrize(
    ("groups", "value"),
    [
        ("[[current], [vectors]]", "vectors"),
        ("[[current], [current, candidate]]", "current"),
        ("[[candidate]]", [["candidate"]]),
        ("[[current, candidate], []]", [["current", "candidate"], []]),
    ],
    ids=["names-no-model", "model-in-two-pools", "model-in-no-pool", "empty-pool"],
)
def test_bad_model_groups_name_the_key_and_value(groups, value):
    """resources.model_groups that does not put every model in exactly one pool is refused, naming it."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*BASE, TWO, f"resources.model_groups={groups}"], environ={})
    assert (caught.value.key, caught.value.value) == ("resources.model_groups", value)


def test_model_groups_without_models_is_refused():
    """resources.model_groups on a single-model run is refused: there is nothing to group."""
    with pytest.raises(ConfigError, match=r"resources\.model_groups"):
        load_config(None, [*BASE, "model.random_init=true", "resources.model_groups=[[a]]"], environ={})


def test_plan_shows_which_models_share_an_actor(tmp_path, sample_images, weights_file):
    """`pipeline plan` packs the models' estimates into resources.actor_memory_gib and prints the pools."""
    from safetensors.torch import load_file

    from pipeline.run.pools import GIB, estimate_bytes, parameter_count
    from pipeline.run.preflight import check_run

    both = (
        f"models=[{{name: resnet18, weights: '{weights_file}', output: current}},"
        f" {{name: resnet18, weights: '{weights_file}', output: half, precision: bf16}}]"
    )
    common = [f"input.uri={sample_images}", f"output.uri={tmp_path / 'out'}", both, "inference.batch_size=32"]
    parameters = parameter_count(load_file(str(weights_file)))
    want = [estimate_bytes(parameters, "fp32", 224, 32), estimate_bytes(parameters, "bf16", 224, 32)]
    assert 0.9 * GIB < sum(want) < 1.08 * GIB  # together they fit 0.9 x 1.2 GiB, not 0.9 x 1 GiB
    apart = check_run(load_config(None, [*common, "resources.actor_memory_gib=1"], environ={}))
    assert [(pool.outputs, pool.estimate_bytes) for pool in apart.pools] == [
        (("current",), want[0]),
        (("half",), want[1]),
    ]
    config = load_config(None, [*common, "resources.actor_memory_gib=1.2"], environ={})
    together = check_run(config)
    assert [(pool.outputs, pool.estimate_bytes) for pool in together.pools] == [
        (("current", "half"), sum(want))
    ]
    lines = "\n".join(together.lines(config))
    assert f"pools    one actor holds every model: current+half ~{sum(want) / GIB:.2f} GiB" in lines
    assert together.as_dict()["pools"] == [
        {"models": ["current", "half"], "estimate_gib": round(sum(want) / GIB, 3)}
    ]
