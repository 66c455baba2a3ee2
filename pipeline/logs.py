"""structlog set-up: JSON lines in production, readable console locally.

Every line carries the run id and stage (bound by the caller); secrets are
redacted twice: by key name, and by value for the secrets present in the
environment (AWS keys, tokens), wherever they appear in a line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "***"
SECRET_KEY_PATTERN = re.compile(r"(secret|token|password|passwd|credential|api[_-]?key|access[_-]?key)", re.I)
SECRET_ENV_NAMES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "RAY_AUTH_TOKEN",
    "PIPELINE_SECRETS",
)
MIN_SECRET_LENGTH = 6


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values in the environment that must never be printed."""
    values = [environ[name] for name in SECRET_ENV_NAMES if len(environ.get(name, "")) >= MIN_SECRET_LENGTH]
    return sorted(set(values), key=len, reverse=True)


class Redactor:
    """structlog processor that masks secret keys and known secret values."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = secrets

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, Mapping):
            return {k: REDACTED if SECRET_KEY_PATTERN.search(str(k)) else self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(item) for item in value]
        return value

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            event_dict[key] = REDACTED if SECRET_KEY_PATTERN.search(key) else self._scrub(event_dict[key])
        return event_dict


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for this process; ``auto`` is console on a TTY, JSON otherwise."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            Redactor(secret_values(os.environ)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    """A logger with fixed fields (e.g. ``stage``)."""
    return structlog.get_logger().bind(**bound)
