"""structlog set-up: JSON lines in production, readable console locally.

Every line carries the run id and stage (bound by the caller, or for a whole
process with :func:`bind_run`). Bad inputs are logged sampled, never one line
per image (:class:`BadInputSampler`). Secrets are redacted three ways, wherever
they appear in a line: by key name (``password=...``), by value for the secrets
present in the environment (AWS keys, tokens), and by shape (credentials in
URLs, signed-URL query parameters).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import os
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from pipeline.ops.redaction import REDACTED, SECRET_KEY_PATTERN, scrub, secret_values


class Redactor:
    """structlog processor that masks secret keys, known secret values and URL credentials."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = secrets

    def scrub_text(self, text: str) -> str:
        """``text`` with every known secret and URL credential replaced by ``***``."""
        return scrub(text, self._secrets)

    def _scrub(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | numbers.Number):
            return value
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, Mapping):
            return {
                k: REDACTED if SECRET_KEY_PATTERN.search(str(k)) else self._scrub(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self._scrub(item) for item in value]
        # Anything else (exceptions, paths, objects) is rendered as text here, where it can be
        # scrubbed, rather than by the renderer's repr() after this processor has run.
        return self.scrub_text(str(value))

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Mask one event in place (structlog processor protocol)."""
        for key in list(event_dict):
            event_dict[key] = REDACTED if SECRET_KEY_PATTERN.search(key) else self._scrub(event_dict[key])
        return event_dict


class _Stderr:
    """Where log lines go: the process's standard error, as it is at the time of writing.

    Under :mod:`pipeline.ops.logrelay`, fd 2 is the relay's pipe and lines go to the original
    stderr (``real``); while a progress display is live, they are printed above it
    (``above``). A logger that kept the ``sys.stderr`` of its configuration would write to
    a closed file once that stream is replaced (test capture, a redirecting wrapper).
    """

    def __init__(self) -> None:
        self.real: TextIO | None = None
        self.above: Callable[[str], None] | None = None
        self._lock = threading.Lock()

    def stream(self) -> TextIO:
        """The stream a line goes to now (the original stderr under the relay)."""
        return self.real or sys.stderr

    def write(self, text: str) -> int:
        with self._lock:
            if self.above is not None:
                self.above(text)
                return len(text)
            return self.stream().write(text)

    def flush(self) -> None:
        self.stream().flush()

    def isatty(self) -> bool:
        return self.stream().isatty()


#: The one stderr every log line of this process is written to.
STDERR = _Stderr()
_RUN_FIELDS: dict[str, str] = {}


def _add_run_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The fields :func:`bind_run` set, on lines from every thread (Ray's and the relay's too)."""
    for key, value in _RUN_FIELDS.items():
        event_dict.setdefault(key, value)
    return event_dict


def _keep_timestamp(stamper: Any) -> Any:
    """Stamp lines that have no time yet: a worker's forwarded line keeps its own."""

    def stamp(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return event_dict if "timestamp" in event_dict else stamper(logger, name, event_dict)

    return stamp


def _round_floats(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Six significant digits: 17.7956, not 17.795587981868877 (values nested in dicts too)."""

    def rounded(value: Any) -> Any:
        if isinstance(value, float) and math.isfinite(value):
            return float(f"{value:.6g}")
        if isinstance(value, dict):
            return {key: rounded(item) for key, item in value.items()}
        return value

    for key, value in event_dict.items():
        event_dict[key] = rounded(value)
    return event_dict


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for this process; ``auto`` is console on a TTY, JSON otherwise.

    Without ``stream``, lines go to the process's current standard error.
    """
    target: Any = stream if stream is not None else STDERR
    use_json = fmt == "json" or (fmt == "auto" and not target.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_run_fields,
            structlog.processors.add_log_level,
            _keep_timestamp(structlog.processors.TimeStamper(fmt="iso", utc=True)),
            _round_floats,
            structlog.processors.format_exc_info,
            Redactor(secret_values(os.environ)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(target),
        cache_logger_on_first_use=False,
    )


def say_error(message: str, exit_code: int, traceback_file: str | None = None) -> None:
    """The command's last line: ``error: ...`` for a person, a JSON error line for a collector.

    ``traceback_file`` (an unforeseen error): the JSON line carries the file's path and the
    traceback itself, since a pod's files go with it; a person gets the path in ``message``.
    """
    renders_json = structlog.is_configured() and isinstance(
        structlog.get_config()["processors"][-1], structlog.processors.JSONRenderer
    )
    if renders_json:
        extra: dict[str, str] = {}
        if traceback_file is not None:
            extra = {"traceback_file": traceback_file, "traceback": _read_text(traceback_file)}
        get_logger(stage="driver").error(message, exit_code=exit_code, **extra)
    else:
        STDERR.write(f"error: {message}\n")
    STDERR.flush()


def save_traceback(exc: BaseException) -> Path:
    """Write ``exc``'s traceback (secrets masked) to a new file in the temporary folder; its path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    text = "".join(traceback.format_exception(exc))
    fd, name = tempfile.mkstemp(prefix=f"pipeline-error-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(scrub(text, secret_values(os.environ)))
    return Path(name)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        return f"(not readable: {exc})"


def get_logger(**bound: Any) -> Any:
    """A logger with fixed fields (e.g. ``run_id``, ``stage``)."""
    return structlog.get_logger().bind(**bound)


def bind_run(run_id: str, pipeline: str | None = None) -> None:
    """Put the run id (and pipeline) on every line this process logs from now on."""
    _RUN_FIELDS.clear()
    _RUN_FIELDS.update(run_id=run_id, **({"pipeline": pipeline} if pipeline else {}))


def unbind_run() -> None:
    """Undo :func:`bind_run`."""
    _RUN_FIELDS.clear()


class BadInputSampler:
    """Warn about bad inputs without a line per image.

    Per (stage, reason), the first ``first`` occurrences are logged with their URI, then
    every ``every``-th with the running count, so a run with a million broken files still
    logs a handful of lines per reason. The run's final summary has the exact counts.
    """

    def __init__(self, logger: Any, *, first: int = 3, every: int = 1000) -> None:
        self._logger = logger
        self._first = first
        self._every = every
        self._seen: Counter[tuple[str, str]] = Counter()

    def record(self, stage: str, reason: str, uri: str, detail: str = "") -> bool:
        """Count one bad input; log it if it is sampled. Returns whether it was logged."""
        key = (stage, str(reason))
        self._seen[key] += 1
        seen = self._seen[key]
        if seen > self._first and seen % self._every:
            return False
        self._logger.warning(
            "bad input",
            stage=stage,
            reason=str(reason),
            uri=uri,
            detail=(detail or "")[:200],
            seen_in_this_worker=seen,
            sampled=f"first {self._first}, then every {self._every}",
        )
        return True


@functools.cache
def bad_input_sampler(pipeline: str, run_id: str) -> BadInputSampler:
    """The sampler of this worker process (configures JSON/console logging if nothing has)."""
    if not structlog.is_configured():
        configure("auto")
    return BadInputSampler(get_logger(run_id=run_id, pipeline=pipeline))
