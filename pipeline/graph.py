"""The one place the Ray Data graph is built, and the resource plan it runs with.

    listing (driver) -> read row_id/uri -> [checkpoint filter on resume]
      -> decode_batch (CPU tasks) -> Classify (actor pool) -> write_parquet

The read emits only ids and URIs, so on resume Ray Data's checkpoint filter
drops finished rows before any bytes are fetched. Resources are computed from
the cluster the driver sees, never copied from a tutorial: the inference pool
never reserves every CPU, or the decode stage would starve.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray.data.datasource import Datasource, ReadTask
from ray.data.datasource.filename_provider import FilenameProvider

from pipeline import storage
from pipeline.decode import DecodeSettings
from pipeline.inference import CPU_AUTO_BATCH, CUDA_AUTO_BATCH, InferenceSettings
from pipeline.stages import Classify, RunLabels, decode_batch

if TYPE_CHECKING:
    import ray.data

    from pipeline.config import Config
    from pipeline.model import ModelSpec

READ_ROWS_PER_TASK = 256
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


class UriListDatasource(Datasource):
    """A Ray Data read over a fixed listing: one block of ``row_id``/``uri`` per read task."""

    def __init__(self, uris: list[str], rows_per_task: int = READ_ROWS_PER_TASK) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._uris = uris
        self._rows_per_task = rows_per_task

    def get_name(self) -> str:
        """Name shown in Ray Data's progress and stats."""
        return "ListImages"

    def estimate_inmemory_data_size(self) -> int:
        """Ids and URIs only; the bytes are fetched later."""
        return sum(len(uri) + storage.ROW_ID_HEX_CHARS for uri in self._uris)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        """Split the listing into tasks of at most ``rows_per_task`` rows."""
        from ray.data.block import BlockMetadata

        del data_context
        chunk = max(1, min(self._rows_per_task, math.ceil(len(self._uris) / max(1, parallelism))))
        tasks = []
        for start in range(0, len(self._uris), chunk):
            uris = self._uris[start : start + chunk]

            def read(uris: list[str] = uris) -> list[pa.Table]:
                return [pa.table({"row_id": [storage.row_id(u) for u in uris], "uri": uris})]

            size = sum(len(uri) + storage.ROW_ID_HEX_CHARS for uri in uris)
            metadata = BlockMetadata(num_rows=len(uris), size_bytes=size, input_files=None, exec_stats=None)
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks


class PartFilenames(FilenameProvider):
    """``part-<run id>-<write id>-<task>.parquet``: stable per run, unique per attempt."""

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        """One name per write task; Ray appends ``-<n>`` when a task writes several files."""
        return f"part-{self._run_id}-{write_uuid}-{task_index:06d}.parquet"


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
    io_num_cpus: tuple[float, float]
    actor_num_cpus: float
    actor_num_gpus: float
    actor_resources: dict[str, float]
    min_actors: int
    max_actors: int
    inference_batch_size: int
    calls_in_flight_per_actor: int
    parallel_calls: bool
    torch_threads: int | None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for printing and the manifest."""
        return asdict(self)


def plan_resources(config: Config, cluster: dict[str, float]) -> ResourcePlan:
    """Size the stages for the cluster the driver sees."""
    res = config.resources
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    device = config.inference.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    groups = res.placement == "worker_groups"
    local_cpu = not groups and device == "cpu" and cpus > 0
    actor_gpus = res.actor_num_gpus if res.actor_num_gpus is not None else (1.0 if device == "cuda" else 0.0)
    actor_cpus = res.actor_num_cpus if res.actor_num_cpus is not None else 1.0
    min_actors = res.min_actors or 1
    max_actors = res.max_actors or min_actors
    decode_cpus = res.decode_num_cpus if res.decode_num_cpus is not None else DECODE_NUM_CPUS
    if not groups and 0 < cpus < decode_cpus:
        decode_cpus = cpus  # the cluster has no more: a bigger decode task would never start
    io_cpus = (READ_NUM_CPUS, WRITE_NUM_CPUS)
    # Two calls in flight per GPU actor: one batch is assembled while the other computes.
    calls = 2 if device == "cuda" else 1
    if local_cpu:
        if res.min_actors is None and res.max_actors is None:
            calls = max(1, min(LOCAL_CPU_CALLS, int(cpus)))
        configured = decode_cpus if res.decode_num_cpus is not None else 0.0
        light_share = max(configured, cpus * LOCAL_LIGHT_CPU_SHARE)  # never less than one decode task
        light = min(MAX_LOCAL_LIGHT_TASK_CPUS, light_share)
        decode_cpus, io_cpus = configured or light, (light, light)
        share = max(0.0, cpus - light_share) / max_actors
        actor_cpus = share if res.actor_num_cpus is None else min(res.actor_num_cpus, share)
    if config.inference.batch_size != "auto":
        batch = int(config.inference.batch_size)
    else:
        batch = CUDA_AUTO_BATCH if device == "cuda" else CPU_AUTO_BATCH
    return ResourcePlan(
        cluster_cpus=cpus,
        cluster_gpus=gpus,
        inference_device=device,
        decode_num_cpus=decode_cpus,
        decode_concurrency=res.decode_concurrency,
        decode_batch_size=config.preprocess.batch_size,
        decode_resources={res.cpu_group_resource: GROUP_RESOURCE_SHARE} if groups else {},
        io_num_cpus=io_cpus,
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
    )


def decode_settings(config: Config, spec: ModelSpec) -> DecodeSettings:
    """Decode settings from the config and the model's documented preprocessing."""
    prep = spec.preprocessing
    return DecodeSettings(
        resize_size=prep.resize_size,
        crop_size=prep.crop_size,
        interpolation=prep.interpolation,
        max_image_pixels=config.preprocess.max_image_pixels,
        reduced_decode=config.preprocess.reduced_decode,
        keep_jpeg=config.preprocess.decode_device == "gpu",
    )


def inference_settings(config: Config, plan: ResourcePlan) -> InferenceSettings:
    """Per-actor inference settings.

    The device stays ``auto`` unless configured: the actor decides from what torch sees
    on its node, so a GPU the cluster declares but the node lacks falls back to CPU.
    """
    inf = config.inference
    return InferenceSettings(
        device=inf.device,
        precision=inf.precision,
        batch_size=inf.batch_size,
        channels_last=inf.channels_last,
        compile=inf.compile,
        torch_threads=inf.torch_threads or plan.torch_threads,
        max_oom_retries=inf.max_oom_retries,
    )


def actor_remote_options(plan: ResourcePlan, settings: InferenceSettings) -> dict[str, Any]:
    """Ray options of the inference actors besides CPUs and GPUs: group resources, thread count.

    Ray starts a worker with OMP_NUM_THREADS = its whole num_cpus (at least 1); torch
    started at 1 thread and widened by ``set_num_threads`` ran 3-12% slower than torch
    started at the right width. The variable is set only where the two differ: another
    runtime_env means a freshly spawned worker rather than one Ray prestarted.
    """
    options: dict[str, Any] = {"resources": plan.actor_resources or None}
    if settings.torch_threads and settings.torch_threads != max(1, int(plan.actor_num_cpus)):
        options["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(settings.torch_threads)}}
    return options


def build_dataset(
    config: Config,
    uris: list[str],
    spec: ModelSpec,
    state_dict_ref: Any,
    plan: ResourcePlan,
    run_id: str,
    progress: Any = None,
) -> ray.data.Dataset:
    """The whole graph up to (not including) the write."""
    import ray.data

    labels = RunLabels(pipeline=config.job.name, run_id=run_id)
    decoding = decode_settings(config, spec)
    limits = storage.ReadLimits(
        max_bytes=config.preprocess.max_input_bytes,
        timeout_s=config.preprocess.max_read_seconds,
        allowed_roots=tuple(os.path.realpath(storage.normalise(root)) for root in config.input.allowed_roots),
    )
    dataset = ray.data.read_datasource(
        UriListDatasource(uris),
        num_cpus=plan.io_num_cpus[0],
        resources=plan.decode_resources or None,
    )
    dataset = dataset.map_batches(
        decode_batch,
        batch_size=plan.decode_batch_size,
        batch_format="numpy",
        num_cpus=plan.decode_num_cpus,
        concurrency=plan.decode_concurrency,
        resources=plan.decode_resources or None,
        fn_kwargs={
            "filesystems": storage.Filesystems(config.storage),
            "limits": limits,
            "base": storage.manifest_base(config.input),
            "settings": decoding,
            "fetch_threads": config.preprocess.fetch_threads,
            "labels": labels,
        },
    )
    settings = inference_settings(config, plan)
    compute = ray.data.ActorPoolStrategy(
        min_size=plan.min_actors,
        max_size=plan.max_actors,
        # One batch queued behind each running call, so no call waits on the scheduler.
        max_tasks_in_flight_per_actor=2 * plan.calls_in_flight_per_actor,
        max_concurrent_calls_per_actor=plan.calls_in_flight_per_actor,
        enable_true_multi_threading=plan.parallel_calls,
    )
    classified: ray.data.Dataset = dataset.map_batches(
        Classify,
        batch_size=plan.inference_batch_size,
        batch_format="numpy",
        compute=compute,
        num_cpus=plan.actor_num_cpus,
        num_gpus=plan.actor_num_gpus,
        fn_constructor_kwargs={
            "spec": spec,
            "state_dict_ref": state_dict_ref,
            "settings": settings,
            "top_k": config.model.top_k,
            "labels": labels,
            "progress": progress,
            "device_decode": decoding if decoding.keep_jpeg else None,
        },
        **actor_remote_options(plan, settings),
    )
    return classified


def write_parquet(
    dataset: ray.data.Dataset,
    data_uri: str,
    filesystem: Any,
    run_id: str,
    rows_per_file: int,
    plan: ResourcePlan,
) -> None:
    """The graph's last stage: Parquet parts under ``data_uri`` (checkpointed by Ray Data)."""
    dataset.write_parquet(
        data_uri,
        filesystem=filesystem,
        filename_provider=PartFilenames(run_id.replace(".", "_")),  # Ray refuses dots in part names
        min_rows_per_file=rows_per_file,
        ray_remote_args={"num_cpus": plan.io_num_cpus[1], "resources": plan.decode_resources},
    )
