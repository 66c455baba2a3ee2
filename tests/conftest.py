"""Shared fixtures: generated images, random weights saved to a file, configs, Ray.

Every test that runs the job uses real parts: an in-process Ray cluster (one per
test session, shared), real files, and weights loaded by the real loader.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from helpers import free_port
from helpers.tiny_models import torchvision_weights

from pipeline.cli import samples
from pipeline.config import Config, load_config

TEST_MODEL = "resnet18"  # random-init mobilenets give near-constant logits: top-1 would be a tie

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test clusters only; the chart sets "token"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One in-process Ray cluster for the tests that run jobs (the job reuses it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 good images (JPEG and PNG, several sizes) and 3 broken files."""
    root = tmp_path_factory.mktemp("images")
    samples.make_images(root, 40, seed=1)
    return root


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init state dict of the test model, saved as safetensors."""
    path = tmp_path_factory.mktemp("weights") / f"{TEST_MODEL}.safetensors"
    return torchvision_weights(path, TEST_MODEL, seed=1234)


@pytest.fixture(scope="session")
def local_config(weights_file: Path) -> Callable[..., Config]:
    """Build a validated config for a local run into ``output_uri``, usable from fixtures of any
    scope; keyword ``section__key=value`` overrides."""

    def build(input_uri: Path | str, output_uri: Path | str, **overrides: object) -> Config:
        items = {
            "input.uri": str(input_uri),
            "output.uri": str(output_uri),
            "model.name": TEST_MODEL,
            "model.weights": str(weights_file),
            "inference.precision": "fp32",
            "logging.progress": "off",
            # The shared sample sets hold broken files on purpose (3 of 43 in sample_images, 7%),
            # which these tests count; the failure budget's own tests set it, or pass None for
            # the code's default.
            "output.max_failure_fraction": 1.0,
        }
        items.update({key.replace("__", "."): value for key, value in overrides.items()})
        return load_config(None, [f"{k}={v}" for k, v in items.items() if v is not None], environ={})

    return build


@pytest.fixture
def make_config(tmp_path: Path, local_config: Callable[..., Config]) -> Callable[..., Config]:
    """:func:`local_config` writing to this test's ``tmp_path / "out"``."""

    def build(input_uri: Path | str, **overrides: object) -> Config:
        return local_config(input_uri, tmp_path / "out", **overrides)

    return build


# Every port a node listens on is a free one: another Ray instance on the machine (the
# in-process test cluster, another test run) would hold the defaults.
NODE_PORT_FLAGS = (
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
)
NODE_OBJECT_STORE_BYTES = 150 * 1024 * 1024


class LocalCluster:
    """A multi-node Ray cluster of ``ray start --block`` processes on loopback.

    Each node runs in its own process group, so a test can stop one node (SIGKILL to
    the group) and teardown never touches Ray processes it did not start.
    """

    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        # What this process's own dashboard requests send; set with the token of a cluster whose
        # nodes run RAY_AUTH_MODE=token (this process's Ray stays without authentication).
        self.headers: dict[str, str] = {}

    def _start(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> None:
        log = (self.temp_dir / f"{name}.log").open("wb")
        ports = [f"--{flag}={free_port()}" for flag in NODE_PORT_FLAGS]
        self.nodes[name] = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "start",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--object-store-memory={NODE_OBJECT_STORE_BYTES}",
                "--disable-usage-stats",
                *ports,
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            start_new_session=True,
        )

    def start_head(self, *extra: str, env: Mapping[str, str] | None = None) -> None:
        """Head node with no CPUs (it does no work) and the Jobs API; ``env`` adds to ``self.env``."""
        self._start(
            "head",
            [
                "--head",
                "--num-cpus=0",
                f"--port={self.port}",
                f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.temp_dir / 'ray'}",
                *extra,
            ],
            env,
        )
        self.wait_for_nodes(1)

    def add_node(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        """A worker node, e.g. ``add_node("cpu", "--num-cpus=1", '--resources={"cpu_group": 1000}')``."""
        before = len(self.alive_nodes())
        self._start(name, [f"--address={self.address}", *args], env)
        self.wait_for_nodes(before + 1)

    def stop_node(self, name: str) -> None:
        """SIGKILL a node's whole process group (raylet, workers), as a lost machine would."""
        process = self.nodes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def alive_nodes(self) -> list[dict[str, object]]:
        """Nodes the dashboard reports alive."""
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        try:  # ray.util.state.list_nodes, with this cluster's headers
            nodes = StateApiClient(self.dashboard_url, headers=self.headers).list(
                StateResource.NODES, options=ListApiOptions(), raise_on_missing_output=True
            )
            return [n.__dict__ for n in nodes if n.state == "ALIVE"]
        except Exception:  # the dashboard is still starting
            return []

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> None:
        """Block until ``count`` nodes are alive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.alive_nodes()) >= count:
                return
            for name, process in self.nodes.items():
                if process.poll() is not None:
                    log = (self.temp_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"ray node {name} exited: {log}")
            time.sleep(0.25)
        raise TimeoutError(f"{count} Ray nodes not alive after {timeout}s")

    def stop(self) -> None:
        """Stop every node this cluster started, workers first."""
        for name in [n for n in self.nodes if n != "head"] + [n for n in self.nodes if n == "head"]:
            self.stop_node(name)


@contextlib.contextmanager
def _new_local_cluster() -> Iterator[LocalCluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths have a limit
    cluster = LocalCluster(temp_dir)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def local_cluster() -> Iterator[LocalCluster]:
    """A fresh multi-node cluster (head only at first); always torn down."""
    with _new_local_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def module_local_cluster() -> Iterator[LocalCluster]:
    """:func:`local_cluster` shared by a module's tests (starting nodes is most of a short test's
    time): each test adds the nodes it needs that are not up; torn down after the module."""
    with _new_local_cluster() as cluster:
        yield cluster


_RELIABILITY: list[dict[str, object]] = []


@pytest.fixture
def reliability() -> list[dict[str, object]]:
    """Where fault and hostile-input tests record what they tried, for the end-of-run report."""
    return _RELIABILITY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the reliability summary: inputs tried, faults injected, rows lost and duplicated."""
    if not _RELIABILITY:
        return
    terminalreporter.section("reliability summary")
    for record in _RELIABILITY:
        terminalreporter.write_line(json.dumps(record, sort_keys=True))
    lost = sum(int(r.get("rows_lost", 0)) for r in _RELIABILITY)  # type: ignore[call-overload]
    duplicated = sum(int(r.get("rows_duplicated", 0)) for r in _RELIABILITY)  # type: ignore[call-overload]
    terminalreporter.write_line(f"TOTAL rows lost: {lost}, rows duplicated: {duplicated}")


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts and ends with structlog's defaults: no test inherits another's stream."""
    import structlog

    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def write_committed(
    root: Path,
    rows: list[dict[str, object]],
    *,
    parts: int = 2,
    commit: bool = True,
    embedding_dim: int = 0,
) -> Path:
    """An output folder made by hand: ``rows`` (schema columns) in ``parts`` Parquet files, then ``_SUCCESS``.

    A row gives ``row_id``, ``status`` and, when ok, ``top_k_labels`` (the first is the label,
    scores fall from 0.9) or ``score``; the rest is filled in. With ``embedding_dim``: an
    ``embed`` output, whose ok rows give ``embedding``. No Ray involved.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import output_schema

    full = []
    for row in rows:
        labels = list(row.get("top_k_labels") or [])
        ok = row["status"] == "ok"
        scores = [round(0.9 - 0.1 * i, 2) for i in range(len(labels))]
        full.append(
            {
                "uri": f"file:///images/{row['row_id']}.jpg",
                "reason": None if ok else "decode_error",
                "error": None if ok else "cannot identify image file",
                "top_k_ids": list(range(len(labels))) if ok else None,
                "top_k_labels": labels if ok else None,
                "top_k_scores": scores if ok else None,
                "label": labels[0] if ok and labels else None,
                "score": scores[0] if ok and scores else None,
                "model_name": "resnet18",
                "model_sha256": "ab" * 32,
                "run_id": "20261201T000000Z-000000",
                **row,
            }
        )
    (root / "data").mkdir(parents=True)
    files = []
    for index in range(parts):
        chunk = full[index::parts]
        name = f"data/part-{index:03d}.parquet"
        schema = output_schema("embed", embedding_dim) if embedding_dim else output_schema()
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), root / name)
        files.append({"path": name, "rows": len(chunk)})
    if commit:
        failed = [row for row in full if row["status"] == "failed"]
        by_reason: dict[str, int] = {}
        for row in failed:
            by_reason[str(row["reason"])] = by_reason.get(str(row["reason"]), 0) + 1
        manifest = {
            "manifest_version": 1,
            "run_id": "20261201T000000Z-000000",
            "job": "hand-made",
            "status": "committed",
            "counts": {"inputs": len(full), "succeeded": len(full) - len(failed), "failed": len(failed)},
            "failed_by_reason": by_reason,
            "config_hash": "cd" * 32,
            "model": {
                "name": "resnet18",
                "sha256": "ab" * 32,
                "task": "embed" if embedding_dim else "classify",
            },
            "seconds": 10.0,
            "images_per_second": len(full) / 10.0,
            "timings_s": {"ray_ready": 1.0, "first_batch": 2.5, "written": 9.0},
            "layout": {"data": "data", "rows": len(full), "files": files, "failed_rows": len(failed)},
        }
        (root / "_SUCCESS").write_text(json.dumps(manifest), encoding="utf-8")
    return root


@pytest.fixture
def write_output() -> Callable[..., Path]:
    """:func:`write_committed`, for tests in any folder."""
    return write_committed
