"""How a run is placed and sized, and ``pipeline plan``, which prints it without inference.

:func:`plan_resources` sizes every stage from the cluster the driver sees, never
copied from a tutorial: the inference pool never reserves every CPU, or the decode
stage would starve. :func:`decode_settings` and :func:`inference_settings` turn the
config into the stages' settings; :mod:`pipeline.run.graph` wires them into the Ray Data
graph. For a target rate ``pipeline plan`` also sizes the chart's CPU and GPU groups
(:mod:`pipeline.run.group_sizing`) and ends with the Helm values to set; ``--json`` prints all of it
as one JSON document.

"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from pipeline.compute.decode import DecodeSettings
from pipeline.compute.inference import InferenceSettings, auto_batch_size
from pipeline.config import worker_groups
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.compute.model import ModelSpec
    from pipeline.config import Config


# CPUs per decode task where resources.decode_num_cpus is left to decide, outside a local
# CPU run (which sizes its light tasks below): one core decodes one image at a time.
DECODE_NUM_CPUS = 1.0


# A local CPU run leaves a quarter of the CPUs (or one configured decode task) beside the
# actors for the light tasks: listing, decode and Parquet writes. Each takes that share, up
# to one CPU, so on up to 4 cores they run one at a time. Every light task running beside
# another starts its own Ray worker process: ~1 CPU-s of imports, then wake-ups. Reads at 0.1
# CPU and decode at 0.25 started five on 2 cores; one at a time ran 0.90 of the ideal end
# to end against 0.85 (2,048 images; steady state 0.97 against 0.91; docs/benchmarks.md).
# One decode task on one core decodes ~400 img/s, 20x what a 2-core model classifies.
LOCAL_LIGHT_CPU_SHARE = 0.25


MAX_LOCAL_LIGHT_TASK_CPUS = 1.0


# A local CPU run, unless the actor counts are set, is one actor running two model calls
# at once, each on half the cores. One call whose threads span every core stalls whenever
# any other process takes one of them (each layer waits for its slowest thread): on the
# 2-core test machine it kept 157% of 200% busy, two single-thread calls 198%, ~25% faster.
# Two calls in one process run as fast as two processes (torch releases the GIL in each
# operator) and start once: a second actor cost ~7 CPU-seconds (Ray worker, ray.data,
# torch, torchvision) and its own copy of the model.
LOCAL_CPU_CALLS = 2


GROUP_RESOURCE_SHARE = 0.001


# Elsewhere (worker groups, or a local GPU), listing rows and writing small Parquet tables
# are light: full-CPU tasks for them would hold cores the decode stage needs, and on small
# clusters starve it for good.
READ_NUM_CPUS = 0.1


WRITE_NUM_CPUS = 0.25


# Parts sized by time when output.rows_per_file is left to decide (part_rows): about
# PART_SECONDS of the job's work, between MIN and MAX rows. A ResNet-50 classifies 7-21
# images a second per core on the 2-core development machines (fp32 and bf16,
# docs/benchmarks.md): 15 per core is the middle. Small enough that a stop drains its open
# part well inside resources.stop_grace_s, and a crash or a stop past its grace redoes at
# most that much per write task (pipeline.run.stopping).
PART_SECONDS = 15.0


CPU_IMAGES_PER_SECOND_PER_CORE = 15.0


MIN_ROWS_PER_FILE = 256


MAX_ROWS_PER_FILE = 20_000


@dataclass(frozen=True)
class ResourcePlan:
    """How each stage is placed and sized; printed by ``pipeline plan``."""

    cluster_cpus: float
    cluster_gpus: float
    inference_device: str
    decode_num_cpus: float
    decode_concurrency: int | None
    decode_batch_size: int
    decode_resources: dict[str, float]
    read_num_cpus: float
    write_num_cpus: float
    actor_num_cpus: float
    actor_num_gpus: float
    actor_resources: dict[str, float]
    min_actors: int
    max_actors: int
    inference_batch_size: int
    calls_in_flight_per_actor: int
    parallel_calls: bool
    torch_threads: int | None
    rows_per_file: int
    inference_group: str | None = None  # the declared worker group the actors run in (worker_groups)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for printing and the manifest."""
        return asdict(self)


def plan_resources(config: Config, cluster: dict[str, float]) -> ResourcePlan:
    """Size the stages: for the declared worker groups, or for the local cluster the driver sees.

    With ``resources.placement: worker_groups``, ``cluster`` is not read: what the nodes up at
    this moment hold says nothing of what the groups scale to (a GPU group scaled to zero has
    no GPU yet, and ``auto`` must still mean CUDA there).
    """
    res = config.resources
    groups = res.placement == "worker_groups"
    inference = worker_groups.carrying(res.worker_groups, res.gpu_group_resource) if groups else {}
    if groups:
        cpus, gpus = worker_groups.totals(res.worker_groups)
        inference_gpus = float(sum(group.gpus for group in inference.values()))
    else:
        cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
        inference_gpus = gpus
    device = config.inference.device
    if device == "auto":
        device = "cuda" if inference_gpus > 0 else "cpu"
    local_cpu = not groups and device == "cpu" and cpus > 0
    actor_gpus = res.actor_num_gpus if res.actor_num_gpus is not None else (1.0 if device == "cuda" else 0.0)
    actor_cpus = res.actor_num_cpus if res.actor_num_cpus is not None else 1.0
    min_actors = res.min_actors or 1
    # Declared GPU groups: left to decide, one actor per GPU they can grow to.
    reach = worker_groups.gpu_actor_reach(inference, actor_gpus) if groups and actor_gpus > 0 else 0
    max_actors = res.max_actors or max(min_actors, reach)
    decode_cpus = res.decode_num_cpus if res.decode_num_cpus is not None else DECODE_NUM_CPUS
    if not groups and 0 < cpus < decode_cpus:
        decode_cpus = cpus  # the cluster has no more: a bigger decode task would never start
    read_cpus, write_cpus = READ_NUM_CPUS, WRITE_NUM_CPUS
    # Two calls in flight per GPU actor: one batch is assembled while the other computes.
    calls = 2 if device == "cuda" else 1
    if local_cpu:
        if res.min_actors is None and res.max_actors is None:
            calls = max(1, min(LOCAL_CPU_CALLS, int(cpus)))
        configured = decode_cpus if res.decode_num_cpus is not None else 0.0
        light_share = max(configured, cpus * LOCAL_LIGHT_CPU_SHARE)  # never less than one decode task
        light = min(MAX_LOCAL_LIGHT_TASK_CPUS, light_share)
        decode_cpus, read_cpus, write_cpus = configured or light, light, light
        share = max(0.0, cpus - light_share) / max_actors
        actor_cpus = share if res.actor_num_cpus is None else min(res.actor_num_cpus, share)
    auto = config.inference.batch_size == "auto"
    batch = auto_batch_size(device) if auto else int(config.inference.batch_size)
    return ResourcePlan(
        cluster_cpus=cpus,
        cluster_gpus=gpus,
        inference_device=device,
        decode_num_cpus=decode_cpus,
        decode_concurrency=res.decode_concurrency,
        decode_batch_size=config.preprocess.batch_size,
        decode_resources={res.cpu_group_resource: GROUP_RESOURCE_SHARE} if groups else {},
        read_num_cpus=read_cpus,
        write_num_cpus=write_cpus,
        actor_num_cpus=actor_cpus,
        actor_num_gpus=actor_gpus,
        actor_resources={res.gpu_group_resource: GROUP_RESOURCE_SHARE} if groups else {},
        min_actors=min_actors,
        max_actors=max_actors,
        inference_batch_size=batch,
        calls_in_flight_per_actor=calls,
        # A GPU's calls take turns on the device; CPU calls each run on their own threads.
        parallel_calls=device == "cpu" and calls > 1,
        # Ray pins OMP threads to an actor's num_cpus; local CPU models share every core
        # between their calls, and with the light decode tasks (the CPU-only ideal in docs/benchmarks.md).
        torch_threads=max(1, int(cpus) // (max_actors * calls)) if local_cpu else None,
        rows_per_file=config.output.rows_per_file or part_rows(device, cpus),
        inference_group=", ".join(inference) or None,
    )


def share_among_pools(plan: ResourcePlan, pools: int) -> ResourcePlan:
    """Each of ``pools`` chained inference pools' plan (a ``models:`` run, :mod:`pipeline.run.pools`).

    On CPU the pools run side by side on the cores one pool would have had: each takes its
    share of the actors' CPUs and threads. On GPU each actor still takes its GPUs (its models
    fit the device only without the other pools'), and the actors the plan allows are split
    between the pools: ``pools`` pools of whole-GPU actors need at least ``pools`` GPUs, else
    refused before any work (a pool whose actor never starts would stall the run).
    """
    if plan.actor_num_gpus > 0:
        if plan.cluster_gpus < pools * plan.actor_num_gpus:  # a pool's actors would wait for ever
            raise ConfigError(
                "resources.actor_num_gpus",
                plan.actor_num_gpus,
                f"{pools} actor pools (resources.model_groups or actor_memory_gib) each take that many "
                f"GPUs per actor, and the cluster has {plan.cluster_gpus:g}: give each a fraction "
                "(models that fit together), or run the models as separate jobs",
            )
        most = max(1, plan.max_actors // pools)
        return replace(plan, max_actors=most, min_actors=min(plan.min_actors, most))
    threads = max(1, plan.torch_threads // pools) if plan.torch_threads else None
    return replace(plan, actor_num_cpus=plan.actor_num_cpus / pools, torch_threads=threads)


def part_rows(device: str, cpus: float) -> int:
    """Rows per Parquet part when ``output.rows_per_file`` is left to decide: about 15 s of work.

    A part is written only once its rows are gathered, so a crash (or a stop whose grace runs
    out) loses at most about a part's worth per write task; big parts suit readers. On GPUs
    the cap (MAX_ROWS_PER_FILE): 4 s at 5,000 img/s, 20 s at 1,000. On CPUs it is the
    expected rate (CPU_IMAGES_PER_SECOND_PER_CORE) times PART_SECONDS.
    """
    if device == "cuda":
        return MAX_ROWS_PER_FILE
    rate = max(1.0, cpus) * CPU_IMAGES_PER_SECOND_PER_CORE
    return int(min(MAX_ROWS_PER_FILE, max(MIN_ROWS_PER_FILE, rate * PART_SECONDS)))


def decode_settings(config: Config, spec: ModelSpec) -> DecodeSettings:
    """Decode settings from the config and the model's documented preprocessing."""
    prep = spec.preprocessing
    return DecodeSettings(
        resize_size=prep.resize_size,
        crop_size=prep.crop_size,
        interpolation=prep.interpolation,
        resize_mode=prep.resize_mode,
        max_image_pixels=config.preprocess.max_image_pixels,
        reduced_decode=config.preprocess.reduced_decode,
        keep_jpeg=config.preprocess.decode_device == "gpu",
    )


def inference_settings(config: Config, plan: ResourcePlan) -> InferenceSettings:
    """Per-actor inference settings.

    On declared worker groups the actors use the plan's device: a GPU pod whose CUDA does not
    work fails its actor loudly rather than running on its CPUs at a fraction of the speed.
    Locally the device stays ``auto`` unless configured: the actor decides from what torch sees.
    """
    inf = config.inference
    groups = config.resources.placement == "worker_groups"
    return InferenceSettings(
        device=plan.inference_device if groups else inf.device,
        precision=inf.precision,
        batch_size=inf.batch_size,
        channels_last=inf.channels_last,
        compile=inf.compile,
        torch_threads=inf.torch_threads or plan.torch_threads,
        max_oom_retries=inf.max_oom_retries,
    )
