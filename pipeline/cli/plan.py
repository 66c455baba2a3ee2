"""``pipeline plan``'s output: what the run will do, the inputs, the stages as they would run, the sizing."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from pipeline.config import dump_yaml
from pipeline.inputs.listing import list_inputs
from pipeline.run import group_sizing
from pipeline.run.placement import ResourcePlan, plan_resources, share_among_pools

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.run.preflight import Verdict


def rounded(data: Any) -> Any:
    """``data`` with every float rounded to 3 decimals, for printing."""
    if isinstance(data, float):
        return round(data, 3)
    if isinstance(data, dict):
        return {key: rounded(value) for key, value in data.items()}
    if isinstance(data, list):
        return [rounded(value) for value in data]
    return data


def print_plan(
    config: Config,
    *,
    sized: dict[str, Any] | None,
    as_json: bool = False,
    verdict: Verdict | None = None,
    show_config: bool = False,
) -> None:
    """Print what the run will do (``verdict``), the inputs found, the stages as they would run, the sizing.

    The resolved config with ``show_config``. With ``as_json``, one JSON document holds all of
    it, the config included (the shape is in docs/deploy.md). On declared worker groups no Ray
    cluster is asked: the plan comes from the declarations.
    """
    if verdict is not None and not as_json:
        print("\n".join(verdict.lines(config)))
    listing = verdict.listing if verdict is not None and verdict.listing is not None else None
    listing = listing or list_inputs(config.input, config.storage)
    found, inputs = f"{len(listing)}", len(listing)
    if listing.format != "files":  # shards: their records, where the footers say (parquet)
        from pipeline.inputs.shard_source import survey

        inputs = survey(config, listing.format, listing.uris)[1] or len(listing)
        found = f"{inputs} records in {len(listing)} {listing.format} shards"
    declared = config.resources.placement == "worker_groups"
    plan = plan_resources(config, {}) if declared else _plan_on_local_cluster(config)
    if verdict is not None and len(verdict.pools) > 1:  # refused as the run would refuse it
        share_among_pools(plan, len(verdict.pools))
    cluster = {"CPU": plan.cluster_cpus, "GPU": plan.cluster_gpus}
    stages = rounded(_stages(config, plan, inputs))
    if as_json:
        document = {
            "will_do": None if verdict is None else verdict.as_dict(),
            "config": config.to_dict(),
            "inputs_found": inputs,
            "input_format": listing.format,
            "cluster": cluster,
            "resource_plan": rounded(plan.as_dict()),
            "stages": stages,
            "sizing": sized,
        }
        print(json.dumps(document, indent=2))
        return
    if show_config:
        print("# resolved config")
        print(dump_yaml(config))
    print(f"# inputs found: {found}")
    where = "the declared worker groups at most replicas" if declared else "this cluster"
    print(f"# stages on {where} " + json.dumps(cluster))
    print(json.dumps(stages, indent=2))
    if sized is not None:
        print("\n".join(group_sizing.render(sized)))


def _plan_on_local_cluster(config: Config) -> ResourcePlan:
    """The plan for the local cluster (``resources.ray_address``, or one started for the question)."""
    import ray

    started = not ray.is_initialized()
    if started:
        address = config.resources.ray_address
        ray.init(
            address=address, include_dashboard=False, logging_level=logging.ERROR, configure_logging=False
        )
    try:
        return plan_resources(config, ray.cluster_resources())  # type: ignore[no-untyped-call]
    finally:
        if started:
            ray.shutdown()


def _stages(config: Config, plan: ResourcePlan, inputs: int) -> dict[str, Any]:
    """Each stage's placement and size, as ``pipeline plan`` prints them."""
    return {
        "list": {"where": "driver", "rows": inputs},
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
        "write": {"uri": config.output.uri, "rows_per_file": plan.rows_per_file},
    }
