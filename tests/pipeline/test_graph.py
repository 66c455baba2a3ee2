"""The resource plan: computed from the cluster, never starving decode, threads matched to actors."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.graph import actor_remote_options, inference_settings, plan_resources


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
            assert (plan.decode_num_cpus, plan.io_num_cpus) == (light, (light, light)), cpus
            assert left / light == pytest.approx(at_once), cpus

    def test_light_tasks_elsewhere_stay_small(self, tmp_path):
        """On worker groups the CPU group decodes at the configured size; listing and writes stay light."""
        config = _config(tmp_path, "resources.placement=worker_groups")
        plan = plan_resources(config, {"CPU": 8.0})
        assert (plan.decode_num_cpus, plan.io_num_cpus) == (1.0, (0.1, 0.25))

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
        assert (plan.decode_num_cpus, plan.actor_num_cpus, plan.io_num_cpus) == (1.0, 1.0, (1.0, 1.0))
        assert plan.cluster_cpus - plan.max_actors * plan.actor_num_cpus >= plan.decode_num_cpus
        small = plan_resources(_config(tmp_path, "resources.decode_num_cpus=0.25"), {"CPU": 2.0})
        assert (small.decode_num_cpus, small.actor_num_cpus, small.io_num_cpus) == (0.25, 1.5, (0.5, 0.5))

    def test_local_decode_task_bigger_than_the_cluster_is_capped(self, tmp_path):
        """decode_num_cpus=4 on a 2-CPU local cluster: a 4-CPU task would never start, so it asks for 2."""
        plan = plan_resources(_config(tmp_path, "resources.decode_num_cpus=4"), {"CPU": 2.0})
        assert (plan.decode_num_cpus, plan.io_num_cpus, plan.actor_num_cpus) == (2.0, (1.0, 1.0), 0.0)
        groups = _config(tmp_path, "resources.decode_num_cpus=4", "resources.placement=worker_groups")
        assert plan_resources(groups, {"CPU": 2.0}).decode_num_cpus == 4.0  # CPU-group nodes may be bigger

    def test_configured_actor_cpus_are_kept_within_what_decode_leaves(self, tmp_path):
        """resources.actor_num_cpus is a reservation: kept when it fits, capped where decode would starve."""
        small = plan_resources(_config(tmp_path, "resources.actor_num_cpus=0.5"), {"CPU": 2.0})
        big = plan_resources(_config(tmp_path, "resources.actor_num_cpus=2"), {"CPU": 2.0})
        assert (small.actor_num_cpus, big.actor_num_cpus) == (0.5, 1.5)

    def test_gpu_worker_groups(self, tmp_path):
        """Worker groups with GPUs: a GPU per actor, group resources, big batches, two calls in flight."""
        config = _config(tmp_path, "resources.placement=worker_groups", "resources.max_actors=4")
        plan = plan_resources(config, {"CPU": 32.0, "GPU": 4.0})
        assert (plan.inference_device, plan.actor_num_gpus, plan.max_actors) == ("cuda", 1.0, 4)
        assert plan.actor_resources == {"gpu_group": 0.001}
        assert plan.decode_resources == {"cpu_group": 0.001}
        assert (plan.inference_batch_size, plan.calls_in_flight_per_actor) == (512, 2)
        assert not plan.parallel_calls  # the device's calls take turns
        assert plan.torch_threads is None


class TestActorOptions:
    def test_thread_count_travels_in_the_worker_environment(self, tmp_path):
        """When torch threads differ from the actor's CPUs, OMP_NUM_THREADS is set for its worker."""
        config = _config(tmp_path, "resources.max_actors=1")
        plan = plan_resources(config, {"CPU": 2.0})
        options = actor_remote_options(plan, inference_settings(config, plan))
        assert options["runtime_env"] == {"env_vars": {"OMP_NUM_THREADS": "2"}}

    def test_no_runtime_env_when_ray_already_matches(self, tmp_path):
        """One thread per fractional-CPU actor is Ray's default: no runtime_env, prestarted workers serve."""
        config = _config(tmp_path)
        plan = plan_resources(config, {"CPU": 2.0})
        assert actor_remote_options(plan, inference_settings(config, plan)) == {"resources": None}
