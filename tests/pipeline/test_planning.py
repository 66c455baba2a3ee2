"""`pipeline plan`: a dry run that shows the stages and sizes the groups for a target."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.planning import size_groups


class TestSizeGroups:
    def test_each_side_is_sized_to_the_target(self):
        """1M images/hour at 1,000 img/s per GPU and 50 img/s per decode core: 1 GPU, 6 cores, 300 img/s."""
        sized = size_groups(1_000_000, decode_rate_per_core=50, model_rate_per_actor=1_000)
        assert sized["inference_actors"] == 1
        assert sized["decode_cores"] == 6
        assert sized["target_images_per_second"] == pytest.approx(277.78, abs=0.01)
        assert sized["expected_images_per_second"] == 300  # the 6 decode cores bound it
        assert sized["gpu_hours_per_million_images"] == pytest.approx(1_000_000 / 300 / 3600, abs=0.001)

    def test_decode_bound_plan_costs_more_gpu_hours(self):
        """When decode is the bottleneck, the expected rate is the decode capacity."""
        sized = size_groups(36_000, decode_rate_per_core=5, model_rate_per_actor=100)
        assert sized["decode_cores"] == 2
        assert sized["expected_images_per_second"] == 10


@pytest.mark.slow
def test_plan_prints_inputs_stages_and_sizing(ray_session, sample_images, make_config, tmp_path, capsys):
    """The dry run finds every input, prints each stage's resources, and sizes from bench JSON."""
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps({"b_decode_images_per_second_per_core": 100.0, "a_model_only_images_per_second": 900.0})
    )
    config = tmp_path / "config.yaml"
    config.write_text(make_config(sample_images).model_dump_json())
    args = [
        "plan",
        "--config",
        str(config),
        "--target-images-per-hour",
        "3600000",
        "--from-bench",
        str(bench),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "# inputs found: 43" in out
    stages = json.loads(out.split("# stages on this cluster", 1)[1].split("\n", 1)[1].split("# sizing", 1)[0])
    assert set(stages) == {"list", "decode", "inference", "write"}
    assert stages["inference"]["batch_size"] == 8  # the CPU default
    sizing = json.loads(out.split("# sizing for the target", 1)[1])
    assert sizing["inference_actors"] == 2
    assert sizing["decode_cores"] == 10
    assert not (tmp_path / "out" / "data").exists()
