"""Pushgateway credentials, read from mounted files at each push (docs/observability.md).

The Pushgateway checks HTTP basic auth (its ``--web.config.file``); an authenticating proxy in
front of it may want a bearer token instead. The config names files only, never a secret:
``metrics.pushgateway_username_file`` and ``metrics.pushgateway_password_file`` (the two keys of
a Kubernetes basic-auth Secret, mounted), or ``metrics.pushgateway_token_file``. The files are
read at every push, so a rotated Secret is picked up, and what they hold goes into the
Authorization header and nowhere else: not a log line, an error message or the run summary.

"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from prometheus_client.exposition import default_handler

#: prometheus_client's push handler: (url, method, timeout, headers, data) -> a function that sends.
Handler = Callable[[str, str, float | None, list[tuple[str, str]], bytes], Callable[[], None]]


class PushSettings(Protocol):
    """The ``metrics`` config section's Pushgateway keys (pipeline.config.MetricsConfig)."""

    pushgateway_url: str | None
    pushgateway_username_file: str | None
    pushgateway_password_file: str | None
    pushgateway_token_file: str | None


def _read(path: str) -> str:
    """A credential file's content without its trailing newline (Secrets made with echo have one)."""
    return Path(path).read_text(encoding="utf-8").rstrip("\r\n")


def auth_handler(settings: PushSettings) -> Handler | None:
    """A push handler that adds the Authorization header from the files; None without credentials.

    A file that cannot be read raises :class:`OSError` at push time (the push fails and is
    logged by path, as any unreachable Pushgateway is); it never fails the job.
    """
    token_file = settings.pushgateway_token_file
    username_file, password_file = settings.pushgateway_username_file, settings.pushgateway_password_file
    if token_file is None and (username_file is None or password_file is None):
        return None

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        def send() -> None:
            if token_file is not None:
                authorization = f"Bearer {_read(token_file)}"
            else:
                assert username_file is not None  # noqa: S101  # checked above
                assert password_file is not None  # noqa: S101
                pair = f"{_read(username_file)}:{_read(password_file)}".encode()
                authorization = f"Basic {base64.b64encode(pair).decode()}"
            default_handler(url, method, timeout, [*headers, ("Authorization", authorization)], data)()

        return send

    return handler
