"""Pushes to a Pushgateway that requires authentication (issue #27.3).

A real ``prometheus-pushgateway`` started with a web config that requires basic auth: the
driver's push with the credentials from mounted files is accepted, one without them or with a
wrong password is refused and logged, and a whole job run leaks the secret nowhere (its log
lines, its summary). A bearer token goes through a small authenticating proxy in front of a
plain Pushgateway, the setup that needs one.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from monitoring_parts import Server, binary, free_port, running
from prometheus_client import CollectorRegistry

from pipeline.cli import samples
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.ops import logs
from pipeline.ops.metrics import JobMetrics
from pipeline.ops.push_auth import auth_handler
from pipeline.run.job import run_job

if TYPE_CHECKING:
    from pipeline.config import Config

USER = "batch-pusher"
PASSWORD = "pushgw-Secret-7f3a91c2"  # noqa: S105  # a test credential, made up
TOKEN = "pushgw-Token-0b6e5d44aa"  # noqa: S105  # a test credential, made up
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for the Pushgateway's web config (libxcrypt's, through Python's crypt)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated, still in 3.11: no bcrypt package is installed

    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4))  # noqa: S324  # bcrypt
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("this libc's crypt() makes no bcrypt hashes")
    return hashed


def basic_auth_pushgateway(workdir: Path) -> Server:
    """A Pushgateway that accepts only USER:PASSWORD (exporter-toolkit's basic_auth_users)."""
    port = free_port()
    web_config = workdir / "web.yml"
    web_config.write_text(f"basic_auth_users:\n  {USER}: '{bcrypt_hash(PASSWORD)}'\n", encoding="utf-8")
    return Server(
        "pushgateway",
        [
            binary("prometheus-pushgateway"),
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={web_config}",
            f"--persistence.file={workdir / 'pushgateway.data'}",
        ],
        f"http://127.0.0.1:{port}/-/ready",
        workdir / "pushgateway.log",
        ready_headers={"Authorization": BASIC},  # every endpoint asks for them, /-/ready too
    )


def get_with_auth(url: str, authorization: str | None) -> str:
    """GET a URL with an Authorization header (urllib ignores user:password in the URL)."""
    request = urllib.request.Request(url)  # noqa: S310  # loopback test server
    if authorization:
        request.add_header("Authorization", authorization)
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return str(response.read().decode())


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Pushgateway requiring basic auth; yields its base URL."""
    workdir = tmp_path_factory.mktemp("pushgw-auth")
    server = basic_auth_pushgateway(workdir)
    with running(server):
        yield server.ready_url.removesuffix("/-/ready")


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    """A mounted Secret as Kubernetes lays it out: one file per key, a trailing newline as echo leaves."""
    directory = tmp_path / "pushgateway-secret"
    directory.mkdir()
    (directory / "username").write_text(USER + "\n", encoding="utf-8")
    (directory / "password").write_text(PASSWORD + "\n", encoding="utf-8")
    (directory / "token").write_text(TOKEN + "\n", encoding="utf-8")
    return directory


def config_with(url: str, tmp_path: Path, **files: Path) -> Config:
    """A config pushing to ``url`` with the credential files given (username=, password=, token=)."""
    keys = {name: f"pushgateway_{name}_file" for name in ("username", "password", "token")}
    overrides = [f"input.uri={tmp_path}", "model.random_init=true", f"metrics.pushgateway_url={url}"]
    overrides += [f"metrics.{keys[name]}={path}" for name, path in files.items()]
    return load_config(None, overrides, environ={})


def job_metrics(config: Config, run_id: str) -> JobMetrics:
    """Driver metrics as job.py builds them, with the config's credentials."""
    return JobMetrics(
        pipeline="secured",
        run_id=run_id,
        pushgateway_url=config.metrics.pushgateway_url,
        push_handler=auth_handler(config.metrics),
    )


def captured_warnings(action: Any) -> list[dict[str, Any]]:
    """Run ``action`` with JSON logs captured; the lines it logged."""
    buffer = io.StringIO()
    logs.configure("json", "info", stream=buffer)
    try:
        action()
    finally:
        structlog.reset_defaults()
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


class TestCredentialSettings:
    """The config names files, in combinations that make sense, before any work."""

    @pytest.mark.parametrize(
        ("files", "key"),
        [
            ({"username": "u"}, "metrics.pushgateway_password_file"),
            ({"password": "p"}, "metrics.pushgateway_username_file"),
            ({"username": "u", "password": "p", "token": "t"}, "metrics.pushgateway_token_file"),
        ],
        ids=["username-alone", "password-alone", "token-and-basic"],
    )
    def test_half_or_double_credentials_are_refused(self, tmp_path: Path, files: dict, key: str) -> None:
        """Username without password (or the reverse), or both kinds at once: a ConfigError naming the key."""
        with pytest.raises(ConfigError) as caught:
            config_with("http://127.0.0.1:9", tmp_path, **{k: Path(v) for k, v in files.items()})
        assert caught.value.key == key

    def test_credentials_without_a_pushgateway_are_refused(self, tmp_path: Path) -> None:
        """Credential files without metrics.pushgateway_url name the missing URL."""
        with pytest.raises(ConfigError) as caught:
            load_config(
                None,
                [f"input.uri={tmp_path}", "model.random_init=true", "metrics.pushgateway_token_file=/t"],
                environ={},
            )
        assert caught.value.key == "metrics.pushgateway_url"


@pytest.mark.slow
class TestBasicAuth:
    """A Pushgateway with basic_auth_users accepts the right pair only."""

    def test_push_with_the_mounted_credentials_is_accepted(
        self, secured: str, secret_dir: Path, tmp_path: Path
    ) -> None:
        """The driver's push, with username and password read from the Secret's files, lands."""
        config = config_with(
            secured, tmp_path, username=secret_dir / "username", password=secret_dir / "password"
        )
        metrics = job_metrics(config, "run-accepted")
        metrics.start("resnet50", "0.1.0", total=10)
        assert metrics.push_failures == 0
        assert 'run_id="run-accepted"' in get_with_auth(f"{secured}/metrics", BASIC)

    @pytest.mark.parametrize("password", [None, "not-the-password"], ids=["no-credentials", "wrong-password"])
    def test_push_without_the_right_credentials_is_refused_and_logged(
        self, secured: str, tmp_path: Path, password: str | None
    ) -> None:
        """Without credentials, or with a wrong password, the Pushgateway answers 401: logged, not stored."""
        files = {}
        if password is not None:
            (tmp_path / "username").write_text(USER, encoding="utf-8")
            (tmp_path / "password").write_text(password, encoding="utf-8")
            files = {"username": tmp_path / "username", "password": tmp_path / "password"}
        metrics = job_metrics(config_with(secured, tmp_path, **files), "run-refused")
        lines = captured_warnings(lambda: metrics.start("resnet50", "0.1.0", total=10))
        assert metrics.push_failures == 1
        (warning,) = [line for line in lines if line["event"] == "pushgateway push failed"]
        assert "401" in warning["error"]
        assert 'run_id="run-refused"' not in get_with_auth(f"{secured}/metrics", BASIC)
        with pytest.raises(urllib.error.HTTPError, match="401"):
            get_with_auth(f"{secured}/metrics", None)

    def test_an_unreadable_secret_is_logged_by_path(self, secured: str, tmp_path: Path) -> None:
        """A credential file that is not there fails the push (logged with its path), never the job."""
        missing = tmp_path / "not-mounted"
        metrics = job_metrics(
            config_with(secured, tmp_path, username=missing, password=missing), "run-nofile"
        )
        lines = captured_warnings(lambda: metrics.start("resnet50", "0.1.0", total=10))
        (warning,) = [line for line in lines if line["event"] == "pushgateway push failed"]
        assert str(missing) in warning["error"]


class _BearerProxy(BaseHTTPRequestHandler):
    """An authenticating proxy: forwards to the Pushgateway only requests with the right token."""

    upstream = ""

    def log_message(self, *_: object) -> None:
        return

    def _forward(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = urllib.request.Request(self.upstream + self.path, data=body or None, method=self.command)  # noqa: S310
        request.add_header("Content-Type", self.headers.get("Content-Type", "text/plain"))
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310  # loopback
            self.send_response(response.status)
            self.end_headers()

    do_GET = do_POST = do_PUT = _forward  # noqa: N815  # BaseHTTPRequestHandler's names


@pytest.mark.slow
def test_bearer_token_through_an_authenticating_proxy(
    pushgateway: str, secret_dir: Path, tmp_path: Path
) -> None:
    """With pushgateway_token_file the push carries the token: the proxy passes it; without, it refuses."""
    handler = type("Proxy", (_BearerProxy,), {"upstream": pushgateway})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        with_token = job_metrics(config_with(url, tmp_path, token=secret_dir / "token"), "run-bearer")
        with_token.start("resnet50", "0.1.0", total=3)
        without = job_metrics(config_with(url, tmp_path), "run-anonymous")
        without.start("resnet50", "0.1.0", total=3)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert (with_token.push_failures, without.push_failures) == (0, 1)
    stored = get_with_auth(f"{pushgateway}/metrics", None)
    assert 'run_id="run-bearer"' in stored
    assert 'run_id="run-anonymous"' not in stored


@pytest.mark.slow
def test_a_whole_run_leaks_no_secret(
    ray_session: None, secured: str, secret_dir: Path, tmp_path: Path
) -> None:
    """A job pushing with basic auth commits and pushes succeeded; the password is in no log or summary."""
    samples.make_images(tmp_path / "images", 6, seed=3)
    config = load_config(
        None,
        [
            f"input.uri={tmp_path / 'images'}",
            f"output.uri={tmp_path / 'out'}",
            "output.max_failure_fraction=0.5",  # the samples' three broken images are failed rows
            "job.name=secured",
            "model.name=mobilenet_v3_small",
            "model.random_init=true",
            "inference.precision=fp32",
            "logging.format=json",
            "logging.progress=off",
            f"metrics.pushgateway_url={secured}",
            f"metrics.pushgateway_username_file={secret_dir / 'username'}",
            f"metrics.pushgateway_password_file={secret_dir / 'password'}",
        ],
        environ={},
    )
    buffer = io.StringIO()
    logs.configure(config.logging.format, config.logging.level, stream=buffer)
    try:
        summary = run_job(config, registry=CollectorRegistry())
    finally:
        structlog.reset_defaults()
    assert summary.status == "succeeded"
    stored = get_with_auth(f"{secured}/metrics", BASIC)
    labels = f'job="batch-inference",pipeline="secured",run_id="{summary.run_id}",status="succeeded"'
    assert f'pipeline_job_status{{instance="",{labels}}} 1' in stored
    written = [path.read_text(encoding="utf-8") for path in (tmp_path / "out").glob("_summary-*.json")]
    assert written
    for text in (buffer.getvalue(), json.dumps(summary.as_dict()), *written):
        assert PASSWORD not in text
        assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in text
