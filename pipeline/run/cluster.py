"""The Ray cluster: join the configured one within a bounded time, or start one.

Also the Ray Data settings every run uses (checkpointing, retried I/O errors, no Ray
progress output).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.config import worker_groups
from pipeline.errors import ClusterUnreachableError, GpuWorkersUnavailableError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.config import Config
    from pipeline.outputs import layout
    from pipeline.run.placement import ResourcePlan

# Ray keeps at most num_cpus idle workers and kills the rest after a second idle, so on a
# small machine each read, decode and write task respawned a worker (about 1.5 CPU-seconds
# of imports each, taken from the model). The embedded cluster keeps a few more.
EMBEDDED_WORKERS_SOFT_LIMIT = 16
GPU_WAIT_POLL_S = 1.0


def connect_ray(config: Config) -> bool:
    """Join the configured cluster, or start an embedded one; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = config.resources.ray_address or os.environ.get("RAY_ADDRESS")
    with _keeping_sigterm_handler():
        if address:
            wait_for_cluster(address, config.resources.connect_timeout_s)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
            return True
        _init_embedded(config)
    return True


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """``ray.init`` makes SIGTERM exit at once (``sys.exit(15)``); keep a handler the CLI set.

    The CLI's handler stops the run cleanly (summary, metrics, exit 143); without one (a
    library caller), Ray's stays.
    """
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _init_embedded(config: Config) -> None:
    import ray

    ray.init(
        object_store_memory=config.resources.object_store_memory_bytes,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=False,
        _system_config={"num_workers_soft_limit": EMBEDDED_WORKERS_SOFT_LIMIT},
    )


def wait_for_cluster(address: str, timeout_s: float) -> None:
    """Wait until the cluster's address accepts connections, at most ``timeout_s`` (then exit 6).

    ``ray.init`` itself retries an address nobody answers for minutes; this bounds it.
    ``auto`` and ``local`` are left to Ray (they name no host).
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    if not host or not port.isdigit():
        return
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, remaining))):
                return
        except OSError as exc:
            if time.monotonic() + 1.0 >= deadline:
                raise ClusterUnreachableError(
                    f"the Ray cluster at {address} did not answer within {timeout_s:g}s "
                    f"(resources.connect_timeout_s): {exc}; check resources.ray_address or RAY_ADDRESS "
                    "and that the head node is up"
                ) from None
        time.sleep(1.0)


def actor_bundle(plan: ResourcePlan) -> dict[str, float]:
    """What one inference actor asks Ray for: its CPUs, GPUs and the inference group's resource."""
    return {"CPU": plan.actor_num_cpus, "GPU": plan.actor_num_gpus, **plan.actor_resources}


@contextlib.contextmanager
def gpu_worker_requested(plan: ResourcePlan) -> Iterator[None]:
    """While the block runs, ask the autoscaler for room for the first inference actor (a GPU worker).

    Asked early, so the pod starts while the driver restores the checkpoint; withdrawn on exit
    whatever happens: the actors' own demand then keeps the workers they run on, and a failed
    run must not leave a GPU pod coming up after it. Without an autoscaler (a local cluster),
    Ray only records the request. Nothing is asked when the actors need no GPU.
    """
    if plan.actor_num_gpus <= 0:
        yield
        return
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[actor_bundle(plan)])
    try:
        yield
    finally:
        request_resources(bundles=[])


def wait_for_gpu_workers(config: Config, plan: ResourcePlan) -> None:
    """Wait until a node can host an inference actor; exit 10 after ``resources.gpu_workers_timeout_s``."""
    bundle, timeout_s = actor_bundle(plan), config.resources.gpu_workers_timeout_s
    deadline = time.monotonic() + timeout_s
    while not any(_fits(node["Resources"], bundle) for node in _alive_nodes()):
        if time.monotonic() >= deadline:
            resources = config.resources
            groups = worker_groups.carrying(resources.worker_groups, resources.gpu_group_resource)
            named = ", ".join(worker_groups.describe(name, group) for name, group in groups.items())
            raise GpuWorkersUnavailableError(
                f"no worker of the GPU group {named or '(none declared)'} joined within {timeout_s:g}s "
                f"(resources.gpu_workers_timeout_s); asked the autoscaler for {bundle} (one "
                "inference actor). Look at the group's pods: pending for GPU quota or capacity, a "
                "node pool that cannot scale, taints, image pulls"
            )
        time.sleep(GPU_WAIT_POLL_S)


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [node for node in ray.nodes() if node["Alive"]]  # type: ignore[no-untyped-call]


def _fits(node: dict[str, float], bundle: dict[str, float]) -> bool:
    """True when a node's total resources hold ``bundle`` (what it runs now does not matter)."""
    return all(node.get(name, 0.0) >= amount for name, amount in bundle.items() if amount > 0)


def configure_data_context(location: layout.OutputLocation) -> None:
    """Checkpoint into the output's fresh checkpoint folder; retry transient storage errors."""
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    ctx = DataContext.get_current()
    ctx.checkpoint_config = CheckpointConfig(
        id_column="row_id",
        checkpoint_path=location.uri_of(location.new_checkpoint_dir()),  # empty: we restored, Ray only writes
        delete_checkpoint_on_success=False,
        override_filesystem=location.arrow_fs(),
    )
    ctx.retried_io_errors = list(dict.fromkeys([*ctx.retried_io_errors, *storage.RETRIED_IO_ERRORS]))
    ctx.enable_progress_bars = False  # the job's own bar (ProgressBar) is clearer
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = 0  # a lost block would lose rows: fail instead
