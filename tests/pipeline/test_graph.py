"""The graph's wiring of the plan: inference actors' Ray options, threads matched to actors."""

from __future__ import annotations

from pipeline.config import load_config
from pipeline.run.graph import actor_remote_options
from pipeline.run.placement import inference_settings, plan_resources


def _config(tmp_path, *overrides: str):
    return load_config(None, [f"input.uri={tmp_path}", "model.random_init=true", *overrides], environ={})


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
