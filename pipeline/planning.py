"""``pipeline plan``: what a run would do on the cluster this driver sees, without inference.

With measured rates (``pipeline bench``) it also sizes the CPU and GPU groups
for a target rate and prints the expected throughput and GPU-hours per
million images.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.config import dump_yaml
from pipeline.graph import plan_resources

if TYPE_CHECKING:
    from pipeline.config import Config


def size_groups(
    target_per_hour: float, decode_rate_per_core: float, model_rate_per_actor: float
) -> dict[str, Any]:
    """CPU cores and inference actors (GPUs) needed for a target, and what they give.

    A GPU job runs at ``min(actors * f, cores * d)`` (docs/benchmarks.md); we size each
    side to the target independently, so they scale independently.
    """
    target = target_per_hour / 3600.0
    actors = max(1, math.ceil(target / model_rate_per_actor))
    cores = max(1, math.ceil(target / decode_rate_per_core))
    expected = min(actors * model_rate_per_actor, cores * decode_rate_per_core)
    return {
        "target_images_per_second": round(target, 2),
        "decode_cores": cores,
        "inference_actors": actors,
        "expected_images_per_second": round(expected, 2),
        "expected_images_per_hour": round(expected * 3600),
        "gpu_hours_per_million_images": round(actors * 1_000_000 / expected / 3600, 3),
    }


def print_plan(
    config: Config, *, target: float | None, decode_rate: float | None, model_rate: float | None
) -> None:
    """Print the resolved config, the inputs found and the stages as they would run."""
    import ray

    listing = storage.list_inputs(config.input, config.storage)
    started = not ray.is_initialized()
    if started:
        address = config.resources.ray_address
        ray.init(
            address=address, include_dashboard=False, logging_level=logging.ERROR, configure_logging=False
        )
    try:
        plan = plan_resources(config, ray.cluster_resources())  # type: ignore[no-untyped-call]
    finally:
        if started:
            ray.shutdown()
    print("# resolved config")
    print(dump_yaml(config))
    print(f"# inputs found: {len(listing)}")
    stages = {
        "list": {"where": "driver", "rows": len(listing)},
        "decode": {
            "num_cpus": plan.decode_num_cpus,
            "concurrency": plan.decode_concurrency or "autoscaled by Ray Data",
            "batch_size": plan.decode_batch_size,
            "resources": plan.decode_resources,
        },
        "inference": {
            "device": plan.inference_device,
            "actors": f"{plan.min_actors}..{plan.max_actors}",
            "num_cpus": plan.actor_num_cpus,
            "num_gpus": plan.actor_num_gpus,
            "batch_size": plan.inference_batch_size,
            "calls_in_flight_per_actor": plan.calls_in_flight_per_actor,
            "parallel_calls": plan.parallel_calls,
            "torch_threads_per_call": plan.torch_threads,
            "resources": plan.actor_resources,
        },
        "write": {"uri": config.output.uri, "rows_per_file": config.output.rows_per_file},
    }
    print("# stages on this cluster " + json.dumps({"CPU": plan.cluster_cpus, "GPU": plan.cluster_gpus}))
    print(json.dumps(stages, indent=2))
    if target is not None:
        if not (decode_rate and model_rate):
            print("# sizing needs --from-bench FILE or --decode-rate and --model-rate (see `pipeline bench`)")
            return
        print("# sizing for the target")
        print(json.dumps(size_groups(target, decode_rate, model_rate), indent=2))
