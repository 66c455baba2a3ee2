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
from typing import TYPE_CHECKING

from pipeline import storage
from pipeline.errors import ClusterUnreachableError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline import output
    from pipeline.config import Config

# Ray keeps at most num_cpus idle workers and kills the rest after a second idle, so on a
# small machine each read, decode and write task respawned a worker (about 1.5 CPU-seconds
# of imports each, taken from the model). The embedded cluster keeps a few more.
EMBEDDED_WORKERS_SOFT_LIMIT = 16


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


def configure_data_context(location: output.OutputLocation) -> None:
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
