"""HTTP(S) inputs, one fetch at a time, against a real server on loopback.

Each way an image URL goes wrong is its row's reason and a detail without the URL; the
transient ones (429, 5xx) are retried, waiting what the server asks within a cap; bytes,
not headers, decide what an image is; the pool of a worker is bounded and reused.
"""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
from http_server import BASIC_PASSWORD, BASIC_USER, ImageServer, self_signed_certificate

from pipeline import storage
from pipeline.compute.decode import DecodeSettings, decode
from pipeline.config import StorageConfig, load_config
from pipeline.errors import ConfigError
from pipeline.inputs import http_fetch, reading
from pipeline.schema import FailureReason

FAST = http_fetch.HttpSettings(
    connect_timeout_s=2, read_timeout_s=0.5, max_attempts=3, backoff_s=0.01, max_wait_s=5, max_redirects=3
)
LIMITS = reading.ReadLimits(max_bytes=1 << 20, timeout_s=30, http=FAST)
FILESYSTEMS = storage.Filesystems(StorageConfig())


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits before each retry, recorded instead of slept."""
    seen: list[float] = []
    monkeypatch.setattr(http_fetch, "sleep", seen.append)
    return seen


def fetch(url: str, limits: reading.ReadLimits = LIMITS) -> reading.Fetched:
    return reading.fetch(FILESYSTEMS, url, limits)


class TestAnswers:
    def test_an_image_is_its_bytes(self, image_server: ImageServer):
        assert fetch(f"{image_server.url}/img/3.jpg") == (image_server.images["3.jpg"], None, "")

    def test_a_wrong_content_type_still_holds_an_image(self, image_server: ImageServer):
        """Served as text/html, a JPEG is still read and decoded: bytes decide, not headers."""
        data, reason, _ = fetch(f"{image_server.url}/wrong-type/5.jpg")
        assert (data, reason) == (image_server.images["5.jpg"], None)
        settings = DecodeSettings(40, 32, "bilinear", 89_478_485, reduced_decode=True)
        assert decode(data, settings).crop is not None

    @pytest.mark.parametrize(("path", "status"), [("/missing", 404), ("/gone", 410)])
    def test_missing_and_gone_are_not_found(self, image_server: ImageServer, path: str, status: int):
        assert fetch(image_server.url + path) == (None, FailureReason.NOT_FOUND, f"HTTP {status}")
        assert image_server.attempts[path] == 1  # not retried

    def test_a_lasting_server_error_is_http_error_with_its_status(self, image_server: ImageServer, waits):
        assert fetch(f"{image_server.url}/error") == (
            None,
            FailureReason.HTTP_ERROR,
            "HTTP 500 after 3 attempts",
        )
        assert image_server.attempts["/error"] == FAST.max_attempts
        assert len(waits) == FAST.max_attempts - 1

    def test_an_authorisation_refusal_is_http_error(self, image_server: ImageServer):
        assert fetch(f"{image_server.url}/auth/1.jpg") == (None, FailureReason.HTTP_ERROR, "HTTP 401")


class TestRetries:
    @pytest.mark.parametrize("kind", ["flaky", "unavailable"])
    def test_a_5xx_then_200_is_read_after_one_retry(self, image_server: ImageServer, waits, kind: str):
        assert fetch(f"{image_server.url}/{kind}/2.jpg") == (image_server.images["2.jpg"], None, "")
        assert image_server.attempts[f"/{kind}/2.jpg"] == 2
        assert len(waits) == 1
        assert 0 < waits[0] <= FAST.backoff_s

    def test_429_waits_what_retry_after_asks(self, image_server: ImageServer, waits):
        image_server.retry_after = 2
        assert fetch(f"{image_server.url}/throttled/4.jpg") == (image_server.images["4.jpg"], None, "")
        assert waits == [2.0]

    def test_retry_after_is_capped(self, image_server: ImageServer, waits):
        image_server.retry_after = 3600
        limits = replace(LIMITS, http=replace(FAST, max_wait_s=0.25))
        assert fetch(f"{image_server.url}/throttled/4.jpg", limits)[1] is None
        assert waits == [0.25]


class TestLimits:
    def test_a_stalled_body_is_a_timeout(self, image_server: ImageServer):
        image_server.slow_s = 2.0
        data, reason, detail = fetch(f"{image_server.url}/slow/1.jpg")
        assert (data, reason) == (None, FailureReason.TIMEOUT)
        assert "http.read_timeout_s" in detail

    def test_a_fetch_past_max_read_seconds_is_a_timeout(self, image_server: ImageServer):
        """The whole fetch is bounded too: a read timeout longer than the fetch's time does not help."""
        image_server.slow_s = 2.0
        limits = replace(LIMITS, timeout_s=0.5, http=replace(FAST, read_timeout_s=10))
        assert fetch(f"{image_server.url}/slow/1.jpg", limits)[1] == FailureReason.TIMEOUT

    def test_an_endless_redirect_is_a_redirect_loop(self, image_server: ImageServer):
        data, reason, detail = fetch(f"{image_server.url}/loop/0")
        assert (data, reason) == (None, FailureReason.REDIRECT_LOOP)
        assert "http.max_redirects" in detail
        assert sum(path.startswith("/loop/") for path, _ in image_server.requests) == FAST.max_redirects + 1

    def test_a_redirect_is_followed(self, image_server: ImageServer):
        assert fetch(f"{image_server.url}/redirect-to/7.jpg") == (image_server.images["7.jpg"], None, "")

    def test_a_declared_large_body_is_refused_from_its_length(self, image_server: ImageServer):
        data, reason, detail = fetch(f"{image_server.url}/big", replace(LIMITS, max_bytes=100_000))
        assert (data, reason) == (None, FailureReason.TOO_LARGE)
        assert detail.startswith("Content-Length ")

    def test_an_undeclared_large_body_is_cut_at_the_limit(self, image_server: ImageServer):
        data, reason, detail = fetch(f"{image_server.url}/big-chunked", replace(LIMITS, max_bytes=100_000))
        assert (data, reason) == (None, FailureReason.TOO_LARGE)
        assert detail == "over preprocess.max_input_bytes=100000"

    def test_the_pool_is_bounded_and_reused(self, image_server: ImageServer):
        """Two batches of 40 on 4 threads open at most 4 connections, all kept for the second batch."""
        settings = replace(FAST, pool_size=4)
        limits = replace(LIMITS, http=settings)
        urls = [f"{image_server.url}/img/{i}.jpg" for i in range(40)]
        for _ in range(2):
            results = reading.fetch_all(FILESYSTEMS, urls, limits, threads=4)
            assert [reason for _, reason, _ in results] == [None] * 40
        assert http_fetch.pool_for(settings) is http_fetch.pool_for(replace(settings))
        assert 1 <= len(image_server.client_ports) <= settings.pool_size


class TestHttps:
    def test_certificates_are_verified_against_the_trusted_cas(self, tmp_path, jpegs, waits, monkeypatch):
        """A certificate no CA store trusts is refused; trusted through SSL_CERT_FILE, the image is read."""
        certificate = self_signed_certificate(tmp_path)
        server = ImageServer({"1.jpg": jpegs[1]}, certificate=certificate).start()
        try:
            url = f"{server.url}/img/1.jpg"
            data, reason, detail = fetch(url, replace(LIMITS, http=replace(FAST, max_hosts=11)))
            assert (data, reason) == (None, FailureReason.HTTP_ERROR)
            assert "SSLCertVerificationError" in detail
            monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
            trusting = replace(LIMITS, http=replace(FAST, max_hosts=12))  # a new pool reads the CAs again
            assert fetch(url, trusting) == (jpegs[1], None, "")
        finally:
            server.stop()


class TestAllowed:
    def test_a_scheme_left_out_is_refused(self, image_server: ImageServer):
        limits = replace(LIMITS, allowed_schemes=("local", "s3"))
        assert fetch(f"{image_server.url}/img/1.jpg", limits) == (
            None,
            FailureReason.SCHEME_NOT_ALLOWED,
            "http:// not in input.allowed_schemes",
        )
        assert image_server.requests == []

    def test_file_urls_are_refused_unless_allowed(self, tmp_path, jpegs):
        image = tmp_path / "x.jpg"
        image.write_bytes(jpegs[0])
        assert fetch(f"file://{image}")[1] == FailureReason.SCHEME_NOT_ALLOWED
        assert fetch(str(image))[1] is None  # a plain path is "local", allowed by default
        allowed = replace(LIMITS, allowed_schemes=(*LIMITS.allowed_schemes, "file"))
        assert fetch(f"file://{image}", allowed) == (jpegs[0], None, "")

    @pytest.mark.parametrize(
        "url", ["http://", "http://host:99999/x.jpg", "http://host:port/x.jpg", "http://[::1/x"]
    )
    def test_a_broken_url_is_invalid_not_retried(self, url: str, waits):
        assert fetch(url) == (
            None,
            FailureReason.INVALID_URI,
            "no host in the URL" if url == "http://" else "not a valid URL",
        )
        assert waits == []

    def test_unknown_schemes_are_still_unsupported(self):
        assert fetch("ftp://host/x.jpg")[1] == FailureReason.UNSUPPORTED_SCHEME

    @pytest.mark.parametrize(
        "url",
        [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.170.2/v2/credentials",
            "http://[fe80::1]/x.jpg",
            "http://[fd00:ec2::254]/latest/",
            "http://[::ffff:169.254.169.254]/latest/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "https://METADATA.GOOGLE.INTERNAL./x.jpg",
        ],
    )
    def test_link_local_and_metadata_addresses_are_refused(self, url: str):
        data, reason, detail = fetch(url)
        assert (data, reason) == (None, FailureReason.ADDRESS_NOT_ALLOWED)
        assert "http.allow_link_local" in detail

    def test_redirects_are_checked_at_every_hop(self, image_server: ImageServer):
        assert fetch(f"{image_server.url}/to-metadata")[1] == FailureReason.ADDRESS_NOT_ALLOWED
        assert fetch(f"{image_server.url}/to-file")[1] == FailureReason.SCHEME_NOT_ALLOWED

    def test_the_address_reached_is_checked_not_only_the_name(self, image_server: ImageServer, monkeypatch):
        """A name that resolves to a refused address is refused once connected (loopback stands in)."""
        import ipaddress

        loopback = ipaddress.ip_network("127.0.0.0/8")
        monkeypatch.setattr(http_fetch, "BLOCKED_NETWORKS", (*http_fetch.BLOCKED_NETWORKS, loopback))
        port = image_server.url.rsplit(":", 1)[1]
        url = f"http://localhost:{port}/img/1.jpg"
        guarded = replace(LIMITS, http=replace(FAST, max_hosts=7))  # a pool of its own
        assert fetch(url, guarded)[1] == FailureReason.ADDRESS_NOT_ALLOWED
        assert image_server.requests == []  # refused before a request was sent
        allowed = replace(LIMITS, http=replace(FAST, max_hosts=7, allow_link_local=True))
        assert fetch(url, allowed)[1] is None


class TestSecrets:
    def test_userinfo_is_sent_as_basic_auth_and_never_shown(self, image_server: ImageServer):
        host = image_server.url.removeprefix("http://")
        good = f"http://{BASIC_USER}:{BASIC_PASSWORD}@{host}/auth/3.jpg"
        assert fetch(good) == (image_server.images["3.jpg"], None, "")
        assert image_server.requests[-1] == ("/auth/3.jpg", True)
        failed = [
            fetch(f"http://{BASIC_USER}:{BASIC_PASSWORD}@{host}/{path}")
            for path in ("missing", "error", "loop/0", "slow/1.jpg")
        ]
        for _, reason, detail in failed:
            assert reason is not None
            assert BASIC_PASSWORD not in detail
            assert host not in detail  # no URL at all in a detail

    def test_a_connection_refused_is_http_error_without_the_url(self, waits):
        with socket.socket() as bound:  # bound, not listening: a connection there is refused
            bound.bind(("127.0.0.1", 0))
            port = bound.getsockname()[1]
            url = f"http://{BASIC_USER}:{BASIC_PASSWORD}@127.0.0.1:{port}/x.jpg?token=abc123secret"
            data, reason, detail = fetch(url)
        assert (data, reason) == (None, FailureReason.HTTP_ERROR)
        assert detail.startswith("connection failed (")
        assert "abc123secret" not in detail
        assert BASIC_PASSWORD not in detail


class TestConfig:
    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("input.allowed_schemes", "[local, ftp]"),
            ("http.read_timeout_s", "0"),
            ("http.max_attempts", "0"),
            ("http.max_redirects", "-1"),
            ("http.max_wait_s", "-2"),
        ],
    )
    def test_a_bad_value_names_key_and_value(self, key: str, value: str):
        with pytest.raises(ConfigError) as caught:
            load_config(None, ["input.uri=/data", "model.random_init=true", f"{key}={value}"], environ={})
        assert caught.value.key == key
        assert caught.value.exit_code == 2
        assert str(caught.value.value) in value

    def test_the_workers_defaults_are_the_configs(self):
        """What a ReadLimits made without settings uses is what the config gives by default."""
        config = load_config(None, ["input.uri=/data", "model.random_init=true"], environ={})
        given = http_fetch.HttpSettings(**config.http.model_dump(), pool_size=config.preprocess.fetch_threads)
        assert given == http_fetch.DEFAULT_SETTINGS == reading.ReadLimits(1, 1).http
        assert tuple(config.input.allowed_schemes) == reading.ReadLimits(1, 1).allowed_schemes

    def test_limits_do_not_change_the_config_hash(self):
        """A resume may narrow the allowed schemes or change HTTP settings: they are limits, not results."""
        base = ["input.uri=/data/m.parquet", "model.random_init=true"]
        first = load_config(None, base, environ={})
        other = load_config(None, [*base, "input.allowed_schemes=[local]", "http.max_attempts=9"], environ={})
        assert first.config_hash() == other.config_hash()
