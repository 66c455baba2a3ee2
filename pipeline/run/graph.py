"""The one place the Ray Data graph is built: datasource, stages wiring, write.

    listing (driver) -> read row_id/uri (or records of shards) -> [checkpoint filter on resume]
      -> decode_batch (CPU tasks) -> ClassifyOrEmbed (actor pool) -> write_parquet

A ``models:`` run's inference is ``ClassifyOrEmbedMany``: one actor pool holding every model,
or (:mod:`pipeline.run.pools`) several pools chained over the same decoded blocks.

The read emits only ids and URIs (and, when manifest columns are carried, each
row's index into their table, :mod:`pipeline.inputs.manifest`), so on resume Ray
Data's checkpoint filter drops finished rows before any bytes are fetched. How
each stage is placed and sized (the :class:`~pipeline.run.placement.ResourcePlan`)
and the stages' settings come from :mod:`pipeline.run.placement`.

"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ray.data.datasource.filename_provider import FilenameProvider

from pipeline import storage
from pipeline.compute.decode_task import DecodeJob, decode_batch
from pipeline.compute.inference_actor import ActorSettings, ClassifyOrEmbed
from pipeline.compute.multi_actor import ClassifyOrEmbedMany, Combined, ModelPart
from pipeline.inputs import reading
from pipeline.inputs.http_fetch import HttpSettings
from pipeline.inputs.listing import manifest_base
from pipeline.ops.metrics import RunLabels
from pipeline.run.placement import decode_settings, inference_settings, share_among_pools

if TYPE_CHECKING:
    import ray.data

    from pipeline.compute.inference import InferenceSettings
    from pipeline.compute.multi_actor import ModelRun
    from pipeline.config import Config
    from pipeline.run.placement import ResourcePlan
    from pipeline.run.write_step import Work


class PartFilenames(FilenameProvider):
    """``part-<run id>-<write id>-<task>.parquet``: stable per run, unique per attempt."""

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        """One name per write task; Ray appends ``-<n>`` when a task writes several files."""
        return f"part-{self._run_id}-{write_uuid}-{task_index:06d}.parquet"


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
    work: Work,
    state_dict_ref: Any,
    run_id: str,
    progress: Any = None,
    carried_ref: Any = None,
) -> ray.data.Dataset:
    """The whole graph up to (not including) the write, over ``work.source`` (:mod:`pipeline.inputs.sources`).

    ``carried_ref``: the object-store reference of the carried columns' table, row for row
    with the source's URIs (None: no column is carried). ``progress`` (the run's tracker) also
    receives the S3 retries of the decode tasks' reads.
    """
    import ray.data

    source, spec, plan = work.source, work.spec, work.plan
    labels = RunLabels(pipeline=config.job.name, run_id=run_id)
    decoding = decode_settings(config, spec)
    limits = reading.ReadLimits(
        max_bytes=config.preprocess.max_input_bytes,
        timeout_s=config.preprocess.max_read_seconds,
        allowed_roots=tuple(os.path.realpath(storage.normalise(root)) for root in config.input.allowed_roots),
        allowed_schemes=tuple(config.input.allowed_schemes),
        http=HttpSettings(**config.http.model_dump(), pool_size=config.preprocess.fetch_threads),
        unreadable_names=source.unreadable_names,
    )
    dataset = ray.data.read_datasource(
        source.datasource,
        # One block stream per shard: a few shards must not be split into blocks of a row or two.
        override_num_blocks=source.blocks,
        num_cpus=plan.read_num_cpus,
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
            "job": DecodeJob(
                filesystems=storage.Filesystems(config.storage, retry_sink=progress),
                limits=limits,
                base=manifest_base(config.input),
                settings=decoding,
                fetch_threads=config.preprocess.fetch_threads,
                labels=labels,
            ),
            "tracker": progress,
        },
    )
    actor_settings = ActorSettings(
        inference=inference_settings(config, plan),
        top_k=config.model.top_k,
        labels=labels,
        device_decode=decoding if decoding.keep_jpeg else None,
        shards=source.carried_schema,
    )
    shared = {"progress": progress, "carried_ref": carried_ref}
    if not work.models:
        kwargs = {"spec": spec, "state_dict_ref": state_dict_ref, "settings": actor_settings, **shared}
        return _inference_stage(dataset, ClassifyOrEmbed, kwargs, plan, config)
    pools = sorted({run.pool for run in work.models})
    if len(pools) == 1:  # several models over one decode, in one actor (pipeline.compute.multi_actor)
        kwargs = {**many_kwargs(work, actor_settings, state_dict_ref), **shared}
        return _inference_stage(dataset, ClassifyOrEmbedMany, kwargs, plan, config)
    # Models that do not fit one device together (pipeline.run.pools): one actor pool each group,
    # chained over the same decoded blocks; all but the last pass the batch on with their columns.
    pool_plan = share_among_pools(plan, len(pools))
    chained: ray.data.Dataset = dataset
    for pool in pools:
        passes = pool != pools[-1]
        indexes = [index for index, run in enumerate(work.models) if run.pool == pool]
        chosen = replace(work, models=tuple(work.models[index] for index in indexes))
        payloads = ray.put(tuple(work.state_dict[index] for index in indexes))  # this pool's models only
        kwargs = {
            **many_kwargs(chosen, actor_settings, payloads, outputs=work.models, passes=passes),
            **shared,
        }
        chained = _inference_stage(chained, ClassifyOrEmbedMany, kwargs, pool_plan, config, arrow=True)
    return chained


def _inference_stage(
    dataset: ray.data.Dataset,
    actor: type[ClassifyOrEmbed | ClassifyOrEmbedMany],
    kwargs: dict[str, Any],
    plan: ResourcePlan,
    config: Config,
    *,
    arrow: bool = False,
) -> ray.data.Dataset:
    """One actor-pool stage of inference, sized by ``plan``; ``arrow``: Arrow batches (chained pools)."""
    import ray.data

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
        actor,
        batch_size=plan.inference_batch_size,
        batch_format="pyarrow" if arrow else "numpy",
        compute=compute,
        num_cpus=plan.actor_num_cpus,
        num_gpus=plan.actor_num_gpus,
        fn_constructor_kwargs=kwargs,
        **actor_remote_options(plan, settings),
    )
    return classified


def many_kwargs(
    work: Work,
    settings: ActorSettings,
    payloads_ref: Any,
    outputs: tuple[ModelRun, ...] = (),
    *,
    passes: bool = False,
) -> dict[str, Any]:
    """The several-model actor's arguments: each model with its own precision and top-k.

    ``outputs``: every model of the run, when this actor holds some of them (one of several pools).
    """
    parts = tuple(
        ModelPart(
            run.output,
            run.spec,
            replace(
                settings,
                inference=replace(settings.inference, precision=run.precision),
                top_k=run.top_k,
            ),
            run.derivation,
        )
        for run in work.models
    )
    names = tuple(run.output for run in outputs)
    return {
        "models": parts,
        "payloads_ref": payloads_ref,
        "combined": Combined(work.spec.name, work.spec.weights_sha256, names, passes),
    }


def write_parquet(
    dataset: ray.data.Dataset,
    data_uri: str,
    filesystem: Any,
    run_id: str,
    plan: ResourcePlan,
) -> None:
    """The graph's last stage: Parquet parts under ``data_uri`` (checkpointed by Ray Data)."""
    dataset.write_parquet(
        data_uri,
        filesystem=filesystem,
        filename_provider=PartFilenames(run_id.replace(".", "_")),  # Ray refuses dots in part names
        min_rows_per_file=plan.rows_per_file,
        ray_remote_args={"num_cpus": plan.write_num_cpus, "resources": plan.decode_resources},
    )
