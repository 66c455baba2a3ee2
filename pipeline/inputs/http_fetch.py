"""Reading one input over HTTP(S): a bounded pool per worker process, retries, limits, no SSRF.

Called by :mod:`pipeline.inputs.reading` for ``http://`` and ``https://`` manifest entries. Each
decode worker process keeps one urllib3 ``PoolManager`` per :class:`HttpSettings` (made on
first use, reused by every later batch): at most ``max_hosts`` hosts, each with at most
``pool_size`` connections (the fetch threads), so a worker never opens more sockets than it
reads with. A URL is tried up to ``max_attempts`` times on 429, 5xx, timeouts and refused
connections, waiting the server's ``Retry-After`` or a doubling backoff with jitter, never
longer than ``max_wait_s``. Redirects are followed here, not by urllib3, so that every hop is
checked against the allowed schemes and addresses; more than ``max_redirects`` is a
``redirect_loop``. The body is refused as ``too_large`` from its Content-Length, or as soon
as more than ``max_bytes`` arrive. Content-Type is ignored: the decoder judges the bytes.

Link-local and cloud metadata addresses are refused (``address_not_allowed``) by name, by
literal address, and again by the address a connection actually reached, so a hostname that
resolves (or re-resolves) to one is caught too. Details never hold the URL, so neither its
``user:password@`` (sent as basic auth, and only to its own host) nor its query reach a row.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from pipeline.schema import FailureReason

if TYPE_CHECKING:
    import socket

    import urllib3

HTTP_SCHEMES = ("http", "https")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
GONE_STATUSES = frozenset({404, 410})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HTTP_OK_MAX = 299
READ_CHUNK_BYTES = 1 << 16
USER_AGENT = "pipeline-batch-inference (image fetch)"
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(net) for net in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
)
BLOCKED_HOSTS = frozenset({"metadata.google.internal", "metadata.goog"})


@dataclass(frozen=True)
class HttpSettings:
    """The ``http`` config section, as the decode workers need it (hashable: it keys the pool)."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    max_attempts: int = 4
    backoff_s: float = 0.5
    max_wait_s: float = 30.0
    max_redirects: int = 5
    max_hosts: int = 32
    pool_size: int = 16
    allow_link_local: bool = False


DEFAULT_SETTINGS = HttpSettings()


class HttpRefusedError(Exception):
    """A URL that gave no image bytes: its row's reason and a detail without the URL."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def blocked_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is link-local or a cloud metadata endpoint."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in BLOCKED_NETWORKS)


def blocked_host(host: str) -> bool:
    """Whether a URL's host names a refused address or metadata endpoint before any lookup."""
    name = host.strip("[]").rstrip(".").lower()
    return name in BLOCKED_HOSTS or blocked_address(name)


class _AddressRefusedError(Exception):
    """Raised inside urllib3 when a connection reached a refused address (not an OSError: no retry)."""


def _checked(sock: socket.socket) -> socket.socket:
    if blocked_address(str(sock.getpeername()[0])):
        sock.close()
        raise _AddressRefusedError
    return sock


_POOLS: dict[HttpSettings, urllib3.PoolManager] = {}
_POOLS_LOCK = threading.Lock()


def pool_for(settings: HttpSettings) -> urllib3.PoolManager:
    """The connection pool of this process for ``settings``, made on first use and kept for later batches."""
    with _POOLS_LOCK:
        if settings not in _POOLS:
            _POOLS[settings] = _make_pool(settings)
        return _POOLS[settings]


def _make_pool(settings: HttpSettings) -> urllib3.PoolManager:
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _checked(super()._new_conn())

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _checked(super()._new_conn())

    class GuardedHTTPPool(urllib3.HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    manager = urllib3.PoolManager(
        num_pools=settings.max_hosts,
        maxsize=settings.pool_size,
        block=True,  # bounded: a thread waits for a free connection rather than opening another
        ca_certs=_ca_certs(),
    )
    if not settings.allow_link_local:
        manager.pool_classes_by_scheme = {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}
    return manager


def _ca_certs() -> str | None:
    """The CAs https:// URLs are verified against: the system's (or ``SSL_CERT_FILE``), else certifi's.

    The image's Python (python-build-standalone, on a base without ca-certificates) may find
    no system store; then certifi's Mozilla bundle, which botocore and requests use too.
    """
    import ssl

    if ssl.create_default_context().cert_store_stats()["x509_ca"]:
        return None  # urllib3 loads the default paths, SSL_CERT_FILE / SSL_CERT_DIR included
    import certifi

    return str(certifi.where())


def fetch_url(
    url: str, settings: HttpSettings, allowed_schemes: tuple[str, ...], max_bytes: int, timeout_s: float
) -> bytes:
    """At most ``max_bytes`` of the body at ``url``, or :class:`HttpRefusedError`.

    ``timeout_s`` (``preprocess.max_read_seconds``) bounds the whole fetch, retries and
    redirects included; each connect and each read also has its own timeout.
    """
    deadline = time.monotonic() + timeout_s
    pool = pool_for(settings)
    for _hop in range(settings.max_redirects + 1):
        headers = _check_target(url, settings, allowed_schemes)
        response = _request(pool, url, headers, settings, deadline)
        read = False
        try:
            status = response.status
            if status in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise HttpRefusedError(FailureReason.HTTP_ERROR, f"HTTP {status} without a Location")
                url = urljoin(url, location)
                continue
            if status in GONE_STATUSES:
                raise HttpRefusedError(FailureReason.NOT_FOUND, f"HTTP {status}")
            if status > HTTP_OK_MAX:
                raise HttpRefusedError(FailureReason.HTTP_ERROR, f"HTTP {status}")
            data = _read_body(response, max_bytes, deadline)
            read = True
            return data
        finally:
            if not read:  # a body left unread would be read as the next request's answer
                response.close()
            response.release_conn()  # always: the pool is bounded, a connection not returned is lost
    detail = f"more than {settings.max_redirects} redirects (http.max_redirects)"
    raise HttpRefusedError(FailureReason.REDIRECT_LOOP, detail)


def _check_target(url: str, settings: HttpSettings, allowed_schemes: tuple[str, ...]) -> dict[str, str]:
    """Refuse a URL (the first or a redirect's) this job may not read; its basic-auth header if any."""
    import urllib3

    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is no number or out of range
    except ValueError:
        raise HttpRefusedError(FailureReason.INVALID_URI, "not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in HTTP_SCHEMES or scheme not in allowed_schemes:
        shown = scheme or "local"
        raise HttpRefusedError(
            FailureReason.SCHEME_NOT_ALLOWED, f"redirected to {shown}, not in input.allowed_schemes"
        )
    if not parts.hostname:
        raise HttpRefusedError(FailureReason.INVALID_URI, "no host in the URL")
    if not settings.allow_link_local and blocked_host(parts.hostname):
        raise _address_refused()
    if parts.username is None:
        return {}
    auth = f"{parts.username}:{parts.password or ''}"
    return dict(urllib3.make_headers(basic_auth=auth))


def _address_refused() -> HttpRefusedError:
    return HttpRefusedError(
        FailureReason.ADDRESS_NOT_ALLOWED, "link-local or metadata address (http.allow_link_local)"
    )


def _request(
    pool: urllib3.PoolManager, url: str, headers: dict[str, str], settings: HttpSettings, deadline: float
) -> Any:
    """The response to GET ``url`` (headers read, body not), after retries; raise on giving up."""
    import urllib3
    from urllib3.exceptions import EmptyPoolError, HTTPError, NewConnectionError
    from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

    failure = HttpRefusedError(FailureReason.TIMEOUT, "no attempt within preprocess.max_read_seconds")
    for attempt in range(1, settings.max_attempts + 1):
        jitter = random.uniform(0.5, 1.0)  # noqa: S311  # not a secret: spreads retries out
        wait = min(settings.backoff_s * 2 ** (attempt - 1) * jitter, settings.max_wait_s)
        left = deadline - time.monotonic()
        timeout = urllib3.Timeout(
            connect=max(0.001, min(settings.connect_timeout_s, left)),
            read=max(0.001, min(settings.read_timeout_s, left)),
        )
        try:
            response = pool.request(
                "GET",
                url,
                headers={"User-Agent": USER_AGENT, **headers},  # given headers replace the pool's
                preload_content=False,
                redirect=False,
                retries=False,
                timeout=timeout,
                pool_timeout=timeout.connect_timeout,
            )
        except _AddressRefusedError:
            raise _address_refused() from None
        except NewConnectionError as exc:  # refused, unresolvable (urllib3 makes it a kind of timeout)
            failure = HttpRefusedError(FailureReason.HTTP_ERROR, _connection_detail(exc, attempt))
        except (Urllib3TimeoutError, EmptyPoolError):
            failure = HttpRefusedError(FailureReason.TIMEOUT, _timeout_detail(settings, attempt))
        except HTTPError as exc:
            failure = HttpRefusedError(FailureReason.HTTP_ERROR, _connection_detail(exc, attempt))
        else:
            if response.status not in RETRY_STATUSES:
                return response
            asked = _retry_after(response)
            wait = min(wait if asked is None else asked, settings.max_wait_s)
            response.close()
            response.release_conn()
            detail = f"HTTP {response.status} after {attempt} attempt{'s' if attempt > 1 else ''}"
            failure = HttpRefusedError(FailureReason.HTTP_ERROR, detail)
        if attempt == settings.max_attempts or time.monotonic() + wait >= deadline:
            break
        sleep(wait)
    raise failure


def sleep(seconds: float) -> None:
    """Wait before a retry (a module function, so tests can see the waits without timing them)."""
    time.sleep(seconds)


def _retry_after(response: Any) -> float | None:
    """The server's ``Retry-After`` in seconds (a number or an HTTP date), if it gave a usable one."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _timeout_detail(settings: HttpSettings, attempts: int) -> str:
    return (
        f"no answer within {settings.connect_timeout_s:g}s connect / {settings.read_timeout_s:g}s read "
        f"(http.connect_timeout_s, http.read_timeout_s), {attempts} attempt{'s' if attempts > 1 else ''}"
    )


def _connection_detail(exc: Exception, attempts: int) -> str:
    """What failed, without the URL urllib3 puts in its messages."""
    cause = exc.__context__ or exc
    reason = getattr(exc, "reason", None) or cause
    name = type(reason).__name__ if isinstance(reason, BaseException) else type(exc).__name__
    errno_text = ""
    if isinstance(reason, OSError) and reason.strerror:
        errno_text = f": {reason.strerror}"
    return f"connection failed ({name}{errno_text}) after {attempts} attempt{'s' if attempts > 1 else ''}"


def _read_body(response: Any, max_bytes: int, deadline: float) -> bytes:
    """The body, refused from Content-Length or as soon as it passes ``max_bytes``."""
    from urllib3.exceptions import HTTPError
    from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

    length = (response.headers.get("Content-Length") or "").strip()
    if length.isdigit() and int(length) > max_bytes:
        detail = f"Content-Length {length}, over preprocess.max_input_bytes={max_bytes}"
        raise HttpRefusedError(FailureReason.TOO_LARGE, detail)
    chunks, size = [], 0
    try:
        while chunk := response.read(READ_CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                detail = f"over preprocess.max_input_bytes={max_bytes}"
                raise HttpRefusedError(FailureReason.TOO_LARGE, detail)
            if time.monotonic() > deadline:
                detail = "body still arriving after preprocess.max_read_seconds"
                raise HttpRefusedError(FailureReason.TIMEOUT, detail)
            chunks.append(chunk)
    except Urllib3TimeoutError:
        detail = f"body stalled after {size} bytes (http.read_timeout_s)"
        raise HttpRefusedError(FailureReason.TIMEOUT, detail) from None
    except HTTPError as exc:
        detail = f"body cut after {size} bytes ({type(exc).__name__})"
        raise HttpRefusedError(FailureReason.HTTP_ERROR, detail) from None
    return b"".join(chunks)
