"""A fault-injecting HTTP proxy for an S3 API (moto), on 127.0.0.1, in threads.

Everything is forwarded unchanged to the upstream server except what a rule picks:

- ``every=N``: request number ``n`` is answered 503 SlowDown when ``n % N == 0`` (deterministic,
  so a test can say how many faults it injected);
- :class:`Fault` rules, matched on the method, the URL path (a regex) and optionally a header:
  ``slow_down`` (503), ``reset`` (the connection is cut with a TCP reset before the request is
  forwarded: it never reaches the server), ``delay`` (forwarded after ``delay_s``) and
  ``swallow`` (forwarded, so the server acts on it, and then no reply is ever sent: the
  connection stays open and silent until the client gives up).
"""

from __future__ import annotations

import http.client
import re
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>fault-proxy</RequestId></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
KINDS = ("slow_down", "reset", "delay", "swallow")
HOLD_LIMIT_S = 600.0  # a swallowed request's connection is held at most this long


@dataclass
class Fault:
    """One rule: the first ``times`` requests (all when None) matching it get ``kind``."""

    kind: str
    path: str = ""  # regex searched in the URL path, e.g. r"/out/_SUCCESS$"
    method: str | None = None
    header: str | None = None  # only requests carrying this header (e.g. If-None-Match)
    times: int | None = None
    delay_s: float = 0.0
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"unknown fault {self.kind!r}; one of {KINDS}"
            raise ValueError(msg)

    def matches(self, method: str, path: str, headers: Any) -> bool:
        """Whether this rule takes the request (and has hits left)."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.header is not None and self.header not in headers:
            return False
        return re.search(self.path, path) is not None


class FaultProxy:
    """Forward to ``upstream``; every ``every``-th request is 503 SlowDown, and ``faults`` apply."""

    def __init__(self, upstream: str, every: int = 5, faults: tuple[Fault, ...] | list[Fault] = ()) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.every = every
        self.rules = list(faults)
        self.requests = 0
        self.faults = 0
        self.log: list[tuple[str, str, str]] = []  # (method, path, what happened), in order
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        """The proxy's endpoint URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, let go of held connections and close the socket."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def hits(self, kind: str) -> int:
        """How many requests got fault ``kind`` from a rule."""
        return sum(rule.hits for rule in self.rules if rule.kind == kind)

    def _decide(self, method: str, path: str, headers: Any) -> Fault | None:
        with self._lock:
            self.requests += 1
            for rule in self.rules:
                if rule.matches(method, path, headers):
                    rule.hits += 1
                    self.faults += 1
                    self.log.append((method, path, rule.kind))
                    return rule
            if self.every > 0 and self.requests % self.every == 0:
                self.faults += 1
                self.log.append((method, path, "slow_down"))
                return Fault("slow_down")
            self.log.append((method, path, "forwarded"))
            return None

    def _hold(self, connection: socket.socket) -> None:
        """Keep a connection open and silent until the client closes it (or the proxy stops)."""
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not self._stopping.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([connection], [], [], 0.2)
            if readable:
                try:
                    if not connection.recv(1, socket.MSG_PEEK):
                        return  # the client gave up and closed
                except OSError:
                    return
                time.sleep(0.2)  # it sent more (a retry on the same connection): still silent

    def _handler(self) -> type[BaseHTTPRequestHandler]:  # noqa: C901  # one small HTTP relay
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                """Quiet: the test reads the counters instead."""

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    return response, response.read()
                finally:
                    upstream.close()

            def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status, reason)
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _relay(self) -> None:
                body = self._body()
                fault = proxy._decide(self.command, urlsplit(self.path).path, self.headers)
                kind = fault.kind if fault is not None else None
                if kind == "slow_down":
                    length = [("Content-Type", "application/xml"), ("Content-Length", str(len(SLOW_DOWN)))]
                    self._reply(503, "Slow Down", length, SLOW_DOWN)
                    return
                if kind == "reset":  # SO_LINGER 0: close() sends RST, the client sees a reset
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if kind == "delay" and fault is not None:
                    time.sleep(fault.delay_s)
                response, data = self._forward(body)
                if kind == "swallow":
                    proxy._hold(self.connection)
                    self.close_connection = True
                    return
                headers = [
                    (key, value)
                    for key, value in response.getheaders()
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length"
                ]
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                headers.append(("Content-Length", length or str(len(data))))
                self._reply(response.status, response.reason, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay  # noqa: N815

        return Handler
