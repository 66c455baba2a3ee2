"""A real HTTP server on loopback that serves images and every way an image URL goes wrong.

``ThreadingHTTPServer`` in a thread; the paths say what each answer is:

- ``/img/<name>``: the image, ``image/jpeg``; ``/wrong-type/<name>``: the same bytes as ``text/html``
- ``/missing`` 404, ``/gone`` 410, ``/error`` 500 every time
- ``/throttled/<name>``: 429 with ``Retry-After`` the first time, then the image
- ``/flaky/<name>``: 500 the first time, then the image; ``/unavailable/<name>``: 503 then the image
- ``/slow/<name>``: headers and half the body, then silence for ``slow_s`` before the rest
- ``/loop/<n>``: a redirect to ``/loop/<n+1>``, for ever; ``/redirect-to/<name>``: one hop to ``/img/<name>``
- ``/to-metadata``, ``/to-file``: a redirect to 169.254.169.254 / to ``file:///etc/passwd``
- ``/big`` a Content-Length over any small limit; ``/big-chunked`` the same, chunked with no length
- ``/auth/<name>``: the image only with basic auth ``user:s3cret-pass``, else 401

Every request is recorded (path, whether it carried an Authorization header, client port).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BASIC_USER, BASIC_PASSWORD = "user", "s3cret-pass"  # a fake, searched for in outputs
BIG_BYTES = 2 * 1024 * 1024
KINDS = frozenset(
    {"img", "wrong-type", "throttled", "flaky", "unavailable", "missing", "gone", "error", "loop"}
    | {"redirect-to", "to-metadata", "to-file", "big", "big-chunked", "auth", "slow"}
)


class ImageServer:
    """The server, its images by name, and what it was asked."""

    def __init__(
        self,
        images: dict[str, bytes],
        *,
        retry_after: int = 1,
        slow_s: float = 3.0,
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        self.images = images
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.requests: list[tuple[str, bool]] = []
        self.client_ports: set[int] = set()  # one per connection the clients opened
        self.attempts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        scheme = "http"
        if certificate is not None:  # https, with a certificate no CA store trusts
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*certificate)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def attempt(self, path: str, authorised: bool, port: int) -> int:
        """Count a request to ``path``; how many there have been, this one included."""
        with self._lock:
            self.client_ports.add(port)
            self.requests.append((path, authorised))
            self.attempts[path] += 1
            return self.attempts[path]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key, as PEM files in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pipeline test server")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up (as the fetcher does at a size limit or timeout) is no error here."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"owner": server})


class _Handler(BaseHTTPRequestHandler):
    """Answers by the first path segment: ``/<kind>/<name>`` runs ``_kind(name, ...)``."""

    protocol_version = "HTTP/1.1"  # keep-alive: the client's pool reuses connections
    owner: ImageServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  # the base's name
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        auth = self.headers.get("Authorization")
        attempt = self.owner.attempt(path, auth is not None, self.client_address[1])
        kind, _, name = path.strip("/").partition("/")
        if kind not in KINDS:
            self._send(404, b"not here")
            return
        answer = getattr(self, f"_{kind.replace('-', '_')}")
        answer(name, self.owner.images.get(name, b""), attempt, auth)

    def _img(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._send(200, image) if image else self._send(404, b"no such image")

    def _wrong_type(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._send(200, image, content_type="text/html; charset=utf-8")

    def _throttled(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        if attempt > 1:
            self._send(200, image)
        else:
            self._send(429, b"slow down", headers={"Retry-After": str(self.owner.retry_after)})

    def _flaky(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._send(200, image) if attempt > 1 else self._send(500, b"try again")

    def _unavailable(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._send(200, image) if attempt > 1 else self._send(503, b"try again")

    def _missing(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._send(404, b"not here")

    def _gone(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._send(410, b"gone")

    def _error(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._send(500, b"broken")

    def _loop(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._redirect(f"/loop/{int(name or 0) + 1}")

    def _redirect_to(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._redirect(f"/img/{name}")

    def _to_metadata(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._redirect("http://169.254.169.254/latest/meta-data/iam/x.jpg")

    def _to_file(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._redirect("file:///etc/passwd")

    def _big(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self._send(200, b"\xff" * BIG_BYTES)

    def _auth(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        expected = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        if auth == f"Basic {expected}":
            self._send(200, image)
        else:
            self._send(401, b"who are you", headers={"WWW-Authenticate": "Basic"})

    def _slow(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(image)))
        self.end_headers()
        self.wfile.write(image[: len(image) // 2])
        self.wfile.flush()
        time.sleep(self.owner.slow_s)
        try:
            self.wfile.write(image[len(image) // 2 :])
        except OSError:  # the client gave up, as it should
            self.close_connection = True

    def _big_chunked(self, name: str, image: bytes, attempt: int, auth: str | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        body = b"\xff" * BIG_BYTES
        try:
            for start in range(0, len(body), 65536):
                chunk = body[start : start + 65536]
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client stopped reading at its limit
            self.close_connection = True

    def _send(
        self, status: int, body: bytes, *, content_type: str = "image/jpeg", headers: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client stopped reading (a body over its limit)
            self.close_connection = True

    def _redirect(self, location: str) -> None:
        self._send(302, b"", headers={"Location": location})
