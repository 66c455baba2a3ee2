"""A local multi-node Ray cluster shaped like the chart's: a work-free head, a CPU and a GPU node.

Started with `ray start` (the venv's bin first on PATH, so the job's entrypoint resolves) under a
private --temp-dir, and stopped by killing exactly the processes that use that directory:
`ray stop` would also stop other Ray instances on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 150 * 1024 * 1024
NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRayCluster:
    """Head + worker nodes on 127.0.0.1."""

    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")))
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        """Environment of the nodes (and so of the job): the venv first on PATH, auth off."""
        return {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    @property
    def dashboard_url(self) -> str:
        """The Jobs API address (what KubeRay's submitter uses)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray_start(self, *args: str) -> None:
        # Every port a node listens on is a free one: other Ray instances here use the defaults.
        ports = [f"--{name}={free_port()}" for name in NODE_PORTS]
        proc = subprocess.run(
            [
                str(VENV_BIN / "ray"),
                "start",
                *args,
                *ports,
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--disable-usage-stats",
            ],
            env=self.env,
            check=False,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"ray start {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )

    def start_head(self, ray_start_params: dict[str, str]) -> None:
        """The head, with the chart's head rayStartParams (num-cpus 0, metrics port) on free ports."""
        self._ray_start(
            "--head",
            f"--num-cpus={ray_start_params['num-cpus']}",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            f"--dashboard-port={self.dashboard_port}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
        )

    def add_worker(self, *, num_cpus: int, resources: dict[str, int], num_gpus: int = 0) -> None:
        """A worker node advertising a chart worker group's Ray resources."""
        self._ray_start(
            f"--address=127.0.0.1:{self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            f"--resources={json.dumps(resources)}",
        )

    def wait_for_nodes(self, count: int, timeout_s: float = 60) -> None:
        """Block until ``count`` nodes are alive."""
        from ray.util.state import list_nodes

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                alive = [n for n in list_nodes(address=self.dashboard_url) if n.state == "ALIVE"]
            except Exception:
                alive = []
            if len(alive) >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes not alive after {timeout_s}s")

    def pids(self) -> list[int]:
        """Processes whose command line names this cluster's temp dir or GCS port (ours only)."""
        markers = (str(self.temp_dir).encode(), f"127.0.0.1:{self.gcs_port}".encode())
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if any(marker in cmdline for marker in markers):
                found.append(int(proc.name))
        return found

    def stop(self) -> None:
        """SIGTERM this cluster's processes, then SIGKILL what is left."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
