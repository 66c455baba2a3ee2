"""The resource plan and `pipeline plan`.

The plan is computed from the cluster, never starves decode and matches threads to
actors; the dry run shows the stages and sizes the groups for a target.
"""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.run.group_sizing import PodShape, Rate, size_cluster
from pipeline.run.placement import inference_settings, plan_resources

# The chart's default groups as its ConfigMap declares them: the GPU group may have no pod yet.
CPU_GROUP = "cpu: {cpus: 8, memory: 16Gi, min_replicas: 1, max_replicas: 8, resources: {cpu_group: 1000}}"
GPU_GROUP = (
    "gpu: {cpus: 4, gpus: 1, memory: 24Gi, min_replicas: 0, max_replicas: 4, resources: {gpu_group: 1000}}"
)
DECLARED = ("resources.placement=worker_groups", f"resources.worker_groups={{{CPU_GROUP}, {GPU_GROUP}}}")


def _config(tmp_path, *overrides: str):
    return load_config(None, [f"input.uri={tmp_path}", "model.random_init=true", *overrides], environ={})


class TestPlanResources:
    def test_two_core_machine_runs_two_calls_in_one_actor(self, tmp_path):
        """Two cores: one actor, two single-thread calls at once, leaving room for decode tasks."""
        plan = plan_resources(_config(tmp_path), {"CPU": 2.0})
        assert (plan.inference_device, plan.min_actors, plan.max_actors) == ("cpu", 1, 1)
        assert (plan.calls_in_flight_per_actor, plan.parallel_calls, plan.torch_threads) == (2, True, 1)
        assert plan.actor_num_cpus == pytest.approx(1.5)
        assert plan.inference_batch_size == 8

    def test_local_light_tasks_run_one_at_a_time_up_to_four_cores(self, tmp_path):
        """Read, decode and write take the share beside the actor: one runs at a time, in one worker.

        Beyond four cores, one light task per core of that quarter.
        """
        for cpus, light, at_once in [(1.0, 0.25, 1), (2.0, 0.5, 1), (4.0, 1.0, 1), (16.0, 1.0, 4)]:
            plan = plan_resources(_config(tmp_path), {"CPU": cpus})
            left = plan.cluster_cpus - plan.max_actors * plan.actor_num_cpus
            light_cpus = (plan.decode_num_cpus, plan.read_num_cpus, plan.write_num_cpus)
            assert light_cpus == (light, light, light), cpus
            assert left / light == pytest.approx(at_once), cpus

    def test_light_tasks_elsewhere_stay_small(self, tmp_path):
        """On worker groups the CPU group decodes at the configured size; listing and writes stay light."""
        config = _config(tmp_path, *DECLARED)
        plan = plan_resources(config, {"CPU": 8.0})
        assert (plan.decode_num_cpus, plan.read_num_cpus, plan.write_num_cpus) == (1.0, 0.1, 0.25)

    def test_one_core_runs_one_call(self, tmp_path):
        """One core has nothing to split: one call, one thread."""
        plan = plan_resources(_config(tmp_path), {"CPU": 1.0})
        assert (plan.max_actors, plan.calls_in_flight_per_actor, plan.parallel_calls) == (1, 1, False)
        assert plan.torch_threads == 1
        assert plan.actor_num_cpus == pytest.approx(0.75)

    def test_bigger_machine_gives_each_call_half_the_cores(self, tmp_path):
        """Sixteen cores: two calls of eight threads each; a quarter of the CPUs stays with decode."""
        plan = plan_resources(_config(tmp_path), {"CPU": 16.0})
        assert (plan.max_actors, plan.calls_in_flight_per_actor, plan.torch_threads) == (1, 2, 8)
        assert plan.actor_num_cpus == 12.0

    def test_configured_actor_counts_are_kept(self, tmp_path):
        """resources.max_actors set by the user wins: one call per actor, the cores split between actors."""
        plan = plan_resources(_config(tmp_path, "resources.max_actors=1"), {"CPU": 2.0})
        assert (plan.min_actors, plan.max_actors, plan.torch_threads) == (1, 1, 2)
        assert (plan.calls_in_flight_per_actor, plan.parallel_calls) == (1, False)
        two_actors = _config(tmp_path, "resources.min_actors=2", "resources.max_actors=2")
        two = plan_resources(two_actors, {"CPU": 2.0})
        assert (two.torch_threads, two.actor_num_cpus) == (1, pytest.approx(0.75))

    def test_configured_decode_cpus_always_leave_room_for_one_decode_task(self, tmp_path):
        """decode_num_cpus set to 1 on 2 CPUs: the actor reserves 1, not 1.5, or no decode task could run."""
        plan = plan_resources(_config(tmp_path, "resources.decode_num_cpus=1"), {"CPU": 2.0})
        assert (plan.decode_num_cpus, plan.actor_num_cpus) == (1.0, 1.0)
        assert (plan.read_num_cpus, plan.write_num_cpus) == (1.0, 1.0)
        assert plan.cluster_cpus - plan.max_actors * plan.actor_num_cpus >= plan.decode_num_cpus
        small = plan_resources(_config(tmp_path, "resources.decode_num_cpus=0.25"), {"CPU": 2.0})
        assert (small.decode_num_cpus, small.actor_num_cpus) == (0.25, 1.5)
        assert (small.read_num_cpus, small.write_num_cpus) == (0.5, 0.5)

    def test_local_decode_task_bigger_than_the_cluster_is_capped(self, tmp_path):
        """decode_num_cpus=4 on a 2-CPU local cluster: a 4-CPU task would never start, so it asks for 2."""
        plan = plan_resources(_config(tmp_path, "resources.decode_num_cpus=4"), {"CPU": 2.0})
        assert (plan.decode_num_cpus, plan.read_num_cpus, plan.write_num_cpus) == (2.0, 1.0, 1.0)
        assert plan.actor_num_cpus == 0.0
        groups = _config(tmp_path, "resources.decode_num_cpus=4", *DECLARED)
        assert plan_resources(groups, {"CPU": 2.0}).decode_num_cpus == 4.0  # CPU-group nodes may be bigger

    def test_configured_actor_cpus_are_kept_within_what_decode_leaves(self, tmp_path):
        """resources.actor_num_cpus is a reservation: kept when it fits, capped where decode would starve."""
        small = plan_resources(_config(tmp_path, "resources.actor_num_cpus=0.5"), {"CPU": 2.0})
        big = plan_resources(_config(tmp_path, "resources.actor_num_cpus=2"), {"CPU": 2.0})
        assert (small.actor_num_cpus, big.actor_num_cpus) == (0.5, 1.5)

    def test_gpu_worker_groups(self, tmp_path):
        """Worker groups with GPUs: a GPU per actor, group resources, big batches, two calls in flight."""
        config = _config(tmp_path, *DECLARED, "resources.max_actors=4")
        plan = plan_resources(config, {"CPU": 32.0, "GPU": 4.0})
        assert (plan.inference_device, plan.actor_num_gpus, plan.max_actors) == ("cuda", 1.0, 4)
        assert plan.actor_resources == {"gpu_group": 0.001}
        assert plan.decode_resources == {"cpu_group": 0.001}
        assert (plan.inference_batch_size, plan.calls_in_flight_per_actor) == (512, 2)
        assert not plan.parallel_calls  # the device's calls take turns
        assert plan.torch_threads is None


class TestDeclaredGroups:
    """placement worker_groups: the plan comes from the declared groups, never from the nodes up."""

    def test_a_gpu_group_scaled_to_zero_still_means_gpu_inference(self, tmp_path):
        """Only the head is up (no GPU anywhere yet): auto is CUDA, a GPU per actor, the GPU batch."""
        config = _config(tmp_path, *DECLARED)
        plan = plan_resources(config, {"CPU": 0.0})
        assert (plan.inference_device, plan.actor_num_gpus, plan.inference_batch_size) == ("cuda", 1.0, 512)
        assert (plan.min_actors, plan.max_actors) == (1, 4)  # every GPU the group can grow to
        assert (plan.cluster_cpus, plan.cluster_gpus) == (8 * 8 + 4 * 4, 4)  # declared, at most replicas
        assert plan.inference_group == "gpu"
        assert inference_settings(config, plan).device == "cuda"  # the actors must find their GPU

    def test_the_nodes_up_change_nothing(self, tmp_path):
        """Whatever the driver sees when it connects (no node, CPUs only, GPUs), the plan is the same."""
        config = _config(tmp_path, *DECLARED)
        plans = [plan_resources(config, live) for live in ({}, {"CPU": 2.0}, {"CPU": 64.0, "GPU": 8.0})]
        assert plans[0] == plans[1] == plans[2]

    def test_groups_without_gpus_run_inference_on_cpu(self, tmp_path):
        """An inference group that declares no GPU: CPU inference, the CPU batch, no GPU asked."""
        cpu_inference = "gpu: {cpus: 4, max_replicas: 2, resources: {gpu_group: 1000}}"
        config = _config(
            tmp_path,
            "resources.placement=worker_groups",
            f"resources.worker_groups={{{CPU_GROUP}, {cpu_inference}}}",
        )
        plan = plan_resources(config, {"CPU": 0.0, "GPU": 8.0})
        assert (plan.inference_device, plan.actor_num_gpus, plan.inference_batch_size) == ("cpu", 0.0, 8)

    def test_groups_are_required(self, tmp_path):
        """placement worker_groups without declared groups stops before any work, naming the key."""
        with pytest.raises(ConfigError, match=r"resources\.worker_groups.*required"):
            _config(tmp_path, "resources.placement=worker_groups")

    def test_each_stage_needs_a_group_carrying_its_resource(self, tmp_path):
        """No group carries the GPU group's resource: the inference actors could run nowhere."""
        groups = f"resources.worker_groups={{{CPU_GROUP}}}"
        with pytest.raises(ConfigError, match=r"no group carries resources\.gpu_group_resource 'gpu_group'"):
            _config(tmp_path, "resources.placement=worker_groups", groups)

    def test_more_actors_than_declared_gpus_are_refused(self, tmp_path):
        """max_actors 8 over a group of at most 4 one-GPU pods: refused, naming the group."""
        with pytest.raises(
            ConfigError, match=r"resources\.max_actors.*8.*<= 4.*'gpu' \(pods of 1 GPU and 4 CPUs, 0 to 4"
        ):
            _config(tmp_path, *DECLARED, "resources.max_actors=8")

    def test_a_gpu_group_that_can_have_no_pod_is_refused(self, tmp_path):
        """A GPU group of at most 0 pods could never host an actor: refused, not waited for."""
        empty = GPU_GROUP.replace("max_replicas: 4", "max_replicas: 0")
        groups = f"resources.worker_groups={{{CPU_GROUP}, {empty}}}"
        with pytest.raises(ConfigError, match=r"resources\.worker_groups.*no actor of 1 GPUs fits"):
            _config(tmp_path, "resources.placement=worker_groups", groups)

    def test_cuda_needs_a_group_with_gpus(self, tmp_path):
        """inference.device cuda where no inference group declares a GPU: refused before any work."""
        cpu_inference = "gpu: {cpus: 4, max_replicas: 2, resources: {gpu_group: 1000}}"
        groups = f"resources.worker_groups={{{CPU_GROUP}, {cpu_inference}}}"
        with pytest.raises(ConfigError, match=r"inference\.device.*declares GPUs"):
            _config(tmp_path, "resources.placement=worker_groups", groups, "inference.device=cuda")


class TestPartSize:
    def test_parts_hold_about_fifteen_seconds_of_work_unless_set(self, tmp_path):
        """Left to decide, a part is about 15 s of the job's work, so a crash loses at most that:
        2 CPU cores at ~15 img/s each -> 450 rows; a GPU at its capped 20,000 (4 s at 5,000
        img/s); many cores capped the same; never under 256. output.rows_per_file, when set, wins."""
        auto = _config(tmp_path)
        assert plan_resources(auto, {"CPU": 2.0}).rows_per_file == 450
        assert plan_resources(auto, {"CPU": 16.0, "GPU": 1.0}).rows_per_file == 20_000
        assert plan_resources(auto, {"CPU": 96.0}).rows_per_file == 20_000
        assert plan_resources(auto, {"CPU": 0.1}).rows_per_file == 256
        assert plan_resources(_config(tmp_path, "output.rows_per_file=64"), {"CPU": 2.0}).rows_per_file == 64


def _size(tmp_path, target: float, decode: float, model: float, headroom: float = 0.0):
    """Sized with one core a CPU pod and one GPU a GPU pod, so pods are cores and GPUs."""
    rates = Rate(decode, "flag", "--decode-rate"), Rate(model, "flag", "--model-rate")
    return size_cluster(_config(tmp_path), target, headroom, *rates, PodShape(cpus=1, gpus=1))


class TestSizeGroups:
    def test_each_side_is_sized_to_the_target(self, tmp_path):
        """1M images/hour at 1,000 img/s per GPU and 50 img/s per decode core: 1 GPU, 6 cores, 300 img/s."""
        sized = _size(tmp_path, 1_000_000, decode=50, model=1_000)
        assert sized["gpu_group"]["gpus_needed"] == 1
        assert sized["cpu_group"]["cores_needed"] == 6
        assert sized["sized_for_images_per_second"] == pytest.approx(277.8)
        assert sized["expected_images_per_second"] == 300  # the 6 decode cores bound it
        assert sized["gpu_hours_per_million_images"] == pytest.approx(1_000_000 / 300 / 3600, abs=0.001)

    def test_decode_bound_plan_costs_more_gpu_hours(self, tmp_path):
        """When decode is the bottleneck, the expected rate is the decode capacity."""
        sized = _size(tmp_path, 36_000, decode=5, model=100)
        assert sized["cpu_group"]["cores_needed"] == 2
        assert sized["expected_images_per_second"] == 10

    def test_headroom_raises_the_rate_sized_for(self, tmp_path):
        """25% headroom on 1M images/hour sizes for 1.25M: 347.2 img/s, 7 cores at 50 each."""
        sized = _size(tmp_path, 1_000_000, decode=50, model=1_000, headroom=0.25)
        assert sized["sized_for_images_per_hour"] == 1_250_000
        assert sized["cpu_group"]["cores_needed"] == 7


@pytest.mark.slow
def test_plan_prints_inputs_stages_and_sizing(ray_session, sample_images, make_config, tmp_path, capsys):
    """The dry run finds every input, prints each stage's resources, and sizes from bench JSON.

    3.6M images/hour with the default 25% headroom is 1,250 img/s: 2 GPUs at 900, 13 cores at 100.
    """
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
    assert "-> 2 GPUs: 2 GPU pods of 1 GPU and 4 cores" in out
    assert "-> 13 cores: 2 CPU pods of 8 cores" in out
    assert out.rstrip().endswith("--set config.resources.max_actors=2")
    assert not (tmp_path / "out" / "data").exists()
