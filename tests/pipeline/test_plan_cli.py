"""`pipeline plan` for the people who size clusters: `--json`, headroom, and the Helm values to set.

The command runs as a real process (stdout must hold the plan and nothing else) on generated
images; the Helm value paths it prints are resolved in the chart's values.yaml.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline
from pipeline.cli import samples
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.run import group_sizing

ROOT = Path(pipeline.__file__).parents[1]
VALUES = ROOT / "deploy" / "helm" / "batch-inference" / "values.yaml"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"


# The worker groups values.yaml declares, as the chart's ConfigMap renders them (tests/deploy).
CHART_GROUPS = (
    "{cpu: {cpus: 8, memory: 16Gi, min_replicas: 1, max_replicas: 8, resources: {cpu_group: 1000}}, "
    "gpu: {cpus: 4, gpus: 1, memory: 24Gi, min_replicas: 1, max_replicas: 4, resources: {gpu_group: 1000}}}"
)


def resolve(values: dict, path: str) -> object:
    """The value at a Helm --set path (dots inside a key escaped as ``\\.``); KeyError if absent."""
    node: object = values
    for key in re.split(r"(?<!\\)\.", path):
        assert isinstance(node, dict), path
        node = node[key.replace("\\.", ".")]
    return node


def chart_values() -> dict:
    return yaml.safe_load(VALUES.read_text(encoding="utf-8"))


def check_helm_values(helm: dict) -> None:
    """Every path exists in values.yaml; replicas sit within the chart's minReplicas."""
    values = chart_values()
    for path in helm:
        resolve(values, path)
    for group in ("cpu", "gpu"):
        pods = helm[f"workerGroups.{group}.maxReplicas"]
        if pods is not None:
            assert pods >= resolve(values, f"workerGroups.{group}.minReplicas")
    if helm["config.resources.max_actors"] is not None:
        per_pod = helm["workerGroups.gpu.resources.limits.nvidia\\.com/gpu"]
        gpus = helm["workerGroups.gpu.maxReplicas"] * per_pod
        assert helm["config.resources.max_actors"] <= gpus
        assert helm["config.resources.max_actors"] >= resolve(values, "config.resources.min_actors")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan-images")
    samples.make_images(root, 5, seed=3)
    return root


def plan(images: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline plan`` on the images, as the chart's config places the stages."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "pipeline", "plan", "--set", f"input.uri={images}"]
    command += ["--set", "model.random_init=true", "--set", "resources.placement=worker_groups"]
    command += ["--set", f"resources.worker_groups={CHART_GROUPS}", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def plain_plan(images: Path) -> subprocess.CompletedProcess[str]:
    """``plan --json`` with no target: one process read by the tests that need it."""
    return plan(images, "--json")


@pytest.mark.slow
class TestPlanCommand:
    def test_json_holds_the_plan_the_sizing_and_the_helm_values(self, images, tmp_path):
        """One JSON document on stdout: inputs, plan, stages, rates and where they came from, Helm values."""
        bench = tmp_path / "bench.json"
        bench.write_text(
            json.dumps(
                {
                    "model": "resnet50",
                    "precision": "bf16",
                    "machine": {"cores": 16, "device": "cuda"},
                    "b_decode_images_per_second_per_core": 123.456789,
                    "a_model_only_images_per_second": 2345.6789,
                }
            )
        )
        target = ["--target-images-per-hour", "5000000", "--from-bench", str(bench)]
        done = plan(images, *target, "--model-rate", "2000", "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["inputs_found"] == 8  # 5 images and 3 broken files: listing does not decode
        assert doc["resource_plan"]["decode_resources"] == {"cpu_group": 0.001}
        assert set(doc["stages"]) == {"list", "decode", "inference", "write"}
        assert doc["config"]["resources"]["placement"] == "worker_groups"
        sized = doc["sizing"]
        assert (sized["target_images_per_hour"], sized["headroom"]) == (5_000_000, 0.25)
        assert sized["sized_for_images_per_hour"] == 6_250_000
        decode, model = sized["rates"]["decode_per_core"], sized["rates"]["model_per_gpu"]
        assert (decode["images_per_second"], decode["from"]) == (123.46, "bench")
        assert str(bench) in decode["source"]
        assert (model["images_per_second"], model["from"], model["source"]) == (2000, "flag", "--model-rate")
        # 6.25M/h = 1,736.1 img/s: 15 decode cores (2 pods of 8), 1 GPU (2,000 img/s).
        assert sized["cpu_group"] == {"cores_needed": 15, "pods": 2, "cpus_per_pod": 8}
        assert sized["gpu_group"] == {"gpus_needed": 1, "pods": 1, "gpus_per_pod": 1, "cpus_per_pod": 4}
        assert sized["expected_images_per_second"] == 1975.3  # 16 cores x 123.46: decode bounds it
        helm = sized["helm_values"]
        assert helm["workerGroups.cpu.maxReplicas"] == 2
        assert helm["workerGroups.gpu.maxReplicas"] == 1
        assert helm["config.resources.max_actors"] == 1
        assert helm["workerGroups.cpu.resources.limits.cpu"] == "8"
        check_helm_values(helm)
        assert "17.79558" not in done.stdout  # numbers are rounded

    def test_without_a_gpu_rate_it_says_none_is_measured_yet(self, images):
        """No model rate: the CPU group is sized from the reference decode rate; the GPU side is unsized."""
        done = plan(images, "--target-images-per-hour", "1000000", "--headroom", "0", "--json")
        assert done.returncode == 0, done.stderr
        sized = json.loads(done.stdout)["sizing"]
        assert sized["rates"]["decode_per_core"]["from"] == "reference"
        assert "docs/benchmarks.md" in sized["rates"]["decode_per_core"]["source"]
        assert sized["rates"]["model_per_gpu"] == {"images_per_second": None, "from": "none", "source": None}
        assert sized["gpu_group"]["pods"] is None
        assert sized["helm_values"]["workerGroups.gpu.maxReplicas"] is None
        assert sized["helm_values"]["config.resources.max_actors"] is None
        assert sized["helm_values"]["workerGroups.cpu.maxReplicas"] == 1
        assert any("no measured GPU reference rate" in note for note in sized["notes"])
        check_helm_values(sized["helm_values"])

    def test_human_view_ends_with_the_helm_values_and_the_headroom_in_words(self, images):
        """The dry run ends with a values snippet and a `helm upgrade --install` line to paste."""
        rates = ["--decode-rate", "400", "--model-rate", "1000", "--headroom", "0.5"]
        done = plan(images, "--target-images-per-hour", "3600000", *rates)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "# inputs found: 8" in out
        assert "sized for 3,600,000 img/h with 50% headroom (5,400,000 img/h)" in out
        tail = out[out.index("# Helm values") :]
        snippet = yaml.safe_load(tail.split("helm upgrade --install", 1)[0])
        assert snippet["workerGroups"]["gpu"]["maxReplicas"] == 2  # 1,500 img/s at 1,000 per GPU
        assert snippet["config"]["resources"]["max_actors"] == 2
        command = out.strip().splitlines()[-10:]
        assert command[0].startswith("helm upgrade --install batch-inference deploy/helm/batch-inference")
        assert "  --set workerGroups.cpu.maxReplicas=1 \\" in command
        assert "  --set 'workerGroups.gpu.resources.limits.nvidia\\.com/gpu=1' \\" in command
        assert command[-1] == "  --set config.resources.max_actors=2"

    def test_embed_plans_like_classify(self, images, plain_plan):
        """The embed task plans the same stages; the plan's config names the task."""
        classify = json.loads(plain_plan.stdout)
        done = plan(images, "--json", "--set", "model.task=embed")
        assert done.returncode == 0, done.stderr
        embed = json.loads(done.stdout)
        assert embed["config"]["model"]["task"] == "embed"
        assert embed["resource_plan"] == classify["resource_plan"]

    def test_no_target_no_sizing(self, plain_plan):
        """Without --target-images-per-hour the JSON says so: sizing is null."""
        done = plain_plan
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["sizing"] is None


@pytest.mark.parametrize("value", ["25", "-0.1", "nan"])
def test_bad_headroom_exits_2_naming_the_flag(images, value):
    """A headroom that is not a fraction between 0 and 1 stops the command before Ray starts."""
    done = plan(images, "--target-images-per-hour", "1000000", f"--headroom={value}")
    assert done.returncode == 2
    assert "'--headroom'" in done.stderr
    assert value in done.stderr
    assert "a fraction between 0 and 1" in done.stderr
    assert done.stdout == ""


class TestSizing:
    """The sizing itself, without a cluster."""

    def test_pod_shapes_are_the_charts_defaults(self):
        """The per-pod CPUs and GPUs plan prints by default are those of values.yaml."""
        values = chart_values()
        assert resolve(values, "workerGroups.cpu.resources.limits.cpu") == str(group_sizing.CPU_POD_CPUS)
        assert resolve(values, "workerGroups.gpu.resources.limits.cpu") == str(
            group_sizing.GPU_POD_CPUS_PER_GPU
        )
        assert (
            resolve(values, "workerGroups.gpu.resources.limits.nvidia\\.com/gpu") == group_sizing.GPU_POD_GPUS
        )

    def test_every_printed_path_exists_and_fits(self, tmp_path):
        """Bigger pods: 8 GPUs a pod; the actors use every GPU the pods bring."""
        config = load_config(None, [f"input.uri={tmp_path}", "model.random_init=true"], environ={})
        decode = group_sizing.Rate(200.0, "flag", "--decode-rate")
        model = group_sizing.Rate(900.0, "flag", "--model-rate")
        sized = group_sizing.size_cluster(
            config, 20_000_000, 0.25, decode, model, group_sizing.PodShape(cpus=32, gpus=8)
        )
        helm = sized["helm_values"]
        check_helm_values(helm)
        # 25M/h = 6,944.4 img/s: 8 GPUs (1 pod), 35 cores (2 pods of 32).
        assert (helm["workerGroups.gpu.maxReplicas"], helm["config.resources.max_actors"]) == (1, 8)
        assert helm["workerGroups.gpu.resources.limits.cpu"] == "32"
        assert helm["workerGroups.cpu.maxReplicas"] == 2

    def test_declared_worker_groups_give_the_pod_shapes(self, tmp_path):
        """On declared worker groups the pods sized are those groups' (a flag wins), not values.yaml's."""
        groups = (
            "{cpu: {cpus: 16, max_replicas: 4, resources: {cpu_group: 1000}}, "
            "gpu: {cpus: 12, gpus: 2, max_replicas: 2, resources: {gpu_group: 1000}}}"
        )
        declared = [f"input.uri={tmp_path}", "model.random_init=true", "resources.placement=worker_groups"]
        config = load_config(None, [*declared, f"resources.worker_groups={groups}"], environ={})
        shape = group_sizing.pod_shape(config, cpus=None, gpus=None)
        assert shape == group_sizing.PodShape(cpus=16, gpus=2, gpu_pod_cpus=12)
        decode = group_sizing.Rate(100.0, "flag", "--decode-rate")
        model = group_sizing.Rate(1000.0, "flag", "--model-rate")
        sized = group_sizing.size_cluster(config, 5_000_000, 0.25, decode, model, shape)
        # 6.25M/h = 1,736.1 img/s: 18 cores (2 pods of 16), 2 GPUs (1 pod of 2).
        assert sized["cpu_group"] == {"cores_needed": 18, "pods": 2, "cpus_per_pod": 16}
        assert sized["gpu_group"] == {"gpus_needed": 2, "pods": 1, "gpus_per_pod": 2, "cpus_per_pod": 12}
        assert sized["helm_values"]["workerGroups.gpu.resources.limits.cpu"] == "12"
        assert group_sizing.pod_shape(config, cpus=32, gpus=None) == group_sizing.PodShape(32, 2, 12)
        local = load_config(None, [f"input.uri={tmp_path}", "model.random_init=true"], environ={})
        assert group_sizing.pod_shape(local, cpus=None, gpus=None) == group_sizing.PodShape()

    def test_gpu_references_come_from_the_benchmarks_page(self):
        """No GPU figure is invented: the table is empty while docs/benchmarks.md has none."""
        page = BENCHMARKS.read_text(encoding="utf-8")
        if "No GPU figures yet" in page:
            assert group_sizing.GPU_REFERENCES == {}
        for reference in group_sizing.GPU_REFERENCES.values():
            assert "docs/benchmarks.md" in reference.source

    def test_bench_file_rates_are_checked(self, tmp_path):
        """A bench file that is not one, or holds a rate of 0, exits 2 naming --from-bench."""
        config = load_config(None, [f"input.uri={tmp_path}", "model.random_init=true"], environ={})
        bench = tmp_path / "bench.json"
        for text in ("[1]", '{"a_model_only_images_per_second": 0}', "not json"):
            bench.write_text(text)
            with pytest.raises(ConfigError, match="--from-bench"):
                group_sizing.resolve_rates(config, decode_rate=None, model_rate=None, bench_path=str(bench))
        with pytest.raises(ConfigError, match="--from-bench"):
            group_sizing.resolve_rates(
                config, decode_rate=None, model_rate=None, bench_path=str(tmp_path / "no")
            )
