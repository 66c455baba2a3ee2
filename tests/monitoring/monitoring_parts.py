"""Real monitoring parts for the tests: promtool, Prometheus, a Pushgateway, a Ray head node.

Every server gets a free loopback port and a temporary directory, runs in its own process
group, and is stopped (SIGTERM, then SIGKILL of the whole group) at teardown, whatever the
test did. A missing Debian binary skips the tests that need it, saying which package.
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
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import free_port

REPO = Path(__file__).resolve().parents[2]
ALERTS_DIR = REPO / "monitoring" / "alerts"
ALERT_TESTS_DIR = ALERTS_DIR / "tests"
GRAFANA_DIR = REPO / "monitoring" / "grafana"
RUNBOOKS_DIR = REPO / "docs" / "runbooks"
RAY_BIN = Path(sys.executable).with_name("ray")

BINARIES = {
    "promtool": ("/usr/bin/promtool", "prometheus"),
    "prometheus": ("/usr/bin/prometheus", "prometheus"),
    "prometheus-pushgateway": ("/usr/bin/prometheus-pushgateway", "prometheus-pushgateway"),
}
STOP_GRACE_S = 3.0  # Ray's processes take longer than this to stop on SIGTERM; SIGKILL is fine for tests


def binary(name: str) -> str:
    """Path of a Debian-packaged tool, or skip the test naming the package to install."""
    default, package = BINARIES[name]
    path = shutil.which(name) or (default if Path(default).exists() else None)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {package}); CI installs it")
    return path


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> bytes:
    """GET a URL (with these request headers) and return the body."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310  # loopback test servers
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return bytes(response.read())


@dataclass
class Server:
    """A process started by a test, in its own process group."""

    name: str
    args: list[str]
    ready_url: str
    log: Path
    env: dict[str, str] | None = None
    temp_dirs: list[Path] = field(default_factory=list)
    ready_headers: dict[str, str] = field(default_factory=dict)  # e.g. credentials the server asks for
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 60.0) -> Server:
        """Start and wait until ``ready_url`` answers; fail with the log tail if it does not."""
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(  # fixed argument list
                self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                http_get(self.ready_url, timeout=2, headers=self.ready_headers)
                return self
            time.sleep(0.25)
        pytest.fail(f"{self.name} not ready at {self.ready_url} after {timeout:.0f}s:\n{self.tail()}")
        return self  # pragma: no cover  # pytest.fail raises

    def tail(self, lines: int = 40) -> str:
        """The end of the server's output."""
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left of it."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # Ray's children (raylet, gcs, workers) share the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_GRACE_S)
        for path in self.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running(server: Server, timeout: float = 60.0) -> Iterator[Server]:
    """Start a server for the duration of a ``with`` block; always stop it."""
    try:
        yield server.start(timeout)
    finally:
        server.stop()


def pushgateway_server(workdir: Path) -> Server:
    """A Pushgateway on a free loopback port."""
    port = free_port()
    return Server(
        "pushgateway",
        [
            binary("prometheus-pushgateway"),
            f"--web.listen-address=127.0.0.1:{port}",
            # Debian's build persists to /var/lib/prometheus/pushgateway.data by default, which
            # every Pushgateway on the machine would share: keep the test's state in its own dir.
            f"--persistence.file={workdir / 'pushgateway.data'}",
        ],
        f"http://127.0.0.1:{port}/-/ready",
        workdir / "pushgateway.log",
    )


def ray_head_server(workdir: Path) -> tuple[Server, str, int]:
    """``ray start --head --block`` with metrics export on; returns (server, address, metrics port).

    Every port Ray opens is a free one, so the test cluster never collides with another on
    the machine; the temp dir is short because Ray's socket paths must fit in 107 bytes.
    """
    ports = {
        name: free_port()
        for name in ("gcs", "metrics", "node", "object", "agent", "agent_grpc", "env", "client", "dash")
    }
    temp_dir = tempfile.mkdtemp(prefix="rayobs-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PATH"] = f"{RAY_BIN.parent}{os.pathsep}{env.get('PATH', '')}"
    args = [
        str(RAY_BIN), "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
        f"--port={ports['gcs']}",
        f"--metrics-export-port={ports['metrics']}",
        f"--node-manager-port={ports['node']}",
        f"--object-manager-port={ports['object']}",
        f"--dashboard-agent-listen-port={ports['agent']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--runtime-env-agent-port={ports['env']}",
        f"--ray-client-server-port={ports['client']}",
        f"--dashboard-port={ports['dash']}",
    ]  # fmt: skip
    server = Server(
        "ray head",
        args,
        f"http://127.0.0.1:{ports['metrics']}/metrics",
        workdir / "ray-head.log",
        env,
        [Path(temp_dir)],
    )
    return server, f"127.0.0.1:{ports['gcs']}", ports["metrics"]


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    server: Server
    url: str

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return ``data``; fail on an error status."""
        query = urllib.parse.urlencode(params)
        try:
            body = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}", timeout=20))
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at the current time; the result vector (or scalar as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for(self, expr: str, timeout: float = 90.0, predicate: Any = bool) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``predicate(result)`` holds; fail with the last result if it never does."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.25)
        pytest.fail(f"timed out waiting for {expr}; last result {result}")
        return result  # pragma: no cover  # pytest.fail raises


def prometheus_server(
    workdir: Path, scrape: dict[str, tuple[str, bool]], rule_files: list[Path]
) -> Prometheus:
    """Prometheus scraping ``{job: (host:port, honor_labels)}`` every second, evaluating ``rule_files``."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "honor_labels": honor, "static_configs": [{"targets": [target]}]}
            for job, (target, honor) in scrape.items()
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    server = Server(
        "prometheus",
        [
            binary("prometheus"),
            f"--config.file={config_file}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
        ],
        f"http://127.0.0.1:{port}/-/ready",
        workdir / "prometheus.log",
    )
    return Prometheus(server, f"http://127.0.0.1:{port}")


def load_yaml(path: Path) -> Any:
    """Parse a YAML file."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


GRAFANA_BUILTINS = ("__rate_interval", "__interval", "__range")


def dashboard_targets(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of every panel, rows' nested panels included."""
    return [
        (inner["title"], target["refId"], target["expr"])
        for panel in dashboard["panels"]
        for inner in [panel, *panel.get("panels", [])]
        for target in inner.get("targets", [])
    ]


def render_query(expr: str, variables: dict[str, str]) -> str:
    """Substitute Grafana variables (``$name`` and ``${name}``), longest names first."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr
