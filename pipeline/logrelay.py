"""Every line written to the process's standard error, as one configured log line.

Ray writes to the driver's stderr from places this package does not control: its C++ core
(glog lines), its Python loggers (tab-separated text), and the lines it forwards from
workers (``(MapWorker pid=12) {...}``, coloured). :func:`install` makes file descriptor 2
a pipe that a thread reads; :func:`parse` turns each line into a level, an event and fields
(a worker's JSON line keeps its own fields), and the line is logged through structlog, so
it is rendered, redacted and filtered like every other line. Log lines themselves go to
the original stderr (``logs.STDERR``). Lines Ray prints on every healthy run are demoted
to debug, each with the reason (:data:`DEMOTED`). :func:`stop` drains the pipe and puts
the original stderr back.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from typing import Any

from pipeline import logs

#: Lines a healthy run prints that are not the user's to act on, and why.
DEMOTED = (
    (
        re.compile(r"has constructor arguments in the object store and max_restarts > 0"),
        "Ray Data passes its own object refs to every actor it starts (ray-project/ray#57733)",
    ),
    (re.compile(r"^Progress bars disabled"), "the job draws its own progress display"),
    (
        re.compile(r"^Token authentication is enabled for this Ray cluster"),
        "the embedded cluster's default, local to this machine",
    ),
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_WORKER = re.compile(r"^\((?:(?P<worker>.*?) )?pid=(?P<pid>\d+)(?:, ip=(?P<ip>[^)]+))?\) (?P<rest>.*)$")
_REPEATED = re.compile(r" \[repeated (?P<times>\d+)x across cluster\]$")
_GLOG = re.compile(r"^\[[\d-]+ [\d:,.]+ (?P<sev>[DIWEF]) \d+ \d+\] (?P<at>\S+:\d+): (?P<msg>.*)$")
_PYLOG = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(?P<level>[A-Z]+) (?P<at>\S+:\d+) -- (?P<msg>.*)$"
)
_GLOG_LEVELS = {"D": "debug", "I": "info", "W": "warning", "E": "error", "F": "critical"}
# Ray's own INFO lines (execution plans, "Data sink finished") repeat what the job's summary says.
_PYLOG_LEVELS = {"DEBUG": "debug", "INFO": "debug", "WARNING": "warning", "ERROR": "error"}
_LOUD_WORDS = (
    (re.compile(r"^(error|fatal)\b|^Traceback \(|^\w*(Error|Exception)\b", re.IGNORECASE), "error"),
    (re.compile(r"^warning\b|\w+Warning\b", re.IGNORECASE), "warning"),
)
_END = b"\x00pipeline-logrelay-end\n"


def parse(text: str) -> tuple[str, str, dict[str, Any]]:
    """One stderr line as (level, event, fields)."""
    text = _ANSI.sub("", text).rstrip("\r\n")
    fields: dict[str, Any] = {}
    worker = _WORKER.match(text)
    if worker:
        text = worker["rest"]
        fields = {"worker": worker["worker"] or "task", "pid": int(worker["pid"])}
        if worker["ip"]:
            fields["ip"] = worker["ip"]
        repeated = _REPEATED.search(text)
        if repeated:
            text, fields["repeated"] = text[: repeated.start()], int(repeated["times"])
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict):
            level, event = str(document.pop("level", "info")), str(document.pop("event", ""))
            return level, event, {**document, **{k: v for k, v in fields.items() if k not in document}}
    level, event, fields["source"] = _plain(text, worker is not None, fields)
    for pattern, why in DEMOTED:
        if pattern.search(event):
            level, fields["demoted"] = "debug", why
    return level, event, fields


def _plain(text: str, from_worker: bool, fields: dict[str, Any]) -> tuple[str, str, str]:
    glog = _GLOG.match(text)
    if glog:
        fields["at"] = glog["at"]
        return _GLOG_LEVELS[glog["sev"]], glog["msg"], "ray_core"
    pylog = _PYLOG.match(text)
    if pylog:
        fields["at"] = pylog["at"]
        return _PYLOG_LEVELS.get(pylog["level"], "critical"), pylog["msg"], "ray"
    level = next((name for pattern, name in _LOUD_WORDS if pattern.search(text)), "info")
    return level, text, "ray_worker" if from_worker else "stderr"


class _Relay:
    """The pipe on fd 2 and the thread that reads it."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.original = os.dup(2)
        self.read_end, self.write_end = os.pipe()
        os.dup2(self.write_end, 2)
        logs.STDERR.real = os.fdopen(
            os.dup(self.original), "w", buffering=1, encoding="utf-8", errors="replace"
        )
        self.thread = threading.Thread(target=self._pump, name="stderr-relay", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self.read_end, 65536)
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                if raw + b"\n" == _END:
                    return
                if raw.strip():
                    emit(raw.decode("utf-8", errors="replace"))

    def stop(self) -> None:
        sys.stderr.flush()
        os.write(self.write_end, _END)
        self.thread.join(timeout=10)
        os.dup2(self.original, 2)
        real, logs.STDERR.real = logs.STDERR.real, None
        if real is not None:
            real.flush()


def emit(text: str) -> None:
    """Log one foreign stderr line."""
    level, event, fields = parse(text)
    log = logs.get_logger()
    getattr(log, level if level in _METHODS else "info")(event, **fields)


_METHODS = {"debug", "info", "warning", "error", "critical"}
_ACTIVE: list[_Relay] = []  # the process's relay, once installed


def install() -> None:
    """Relay fd 2 from now on (once per process; does nothing if already installed)."""
    if not _ACTIVE:
        _ACTIVE.append(_Relay())


def stop() -> None:
    """Relay what is still in the pipe, then write to the original stderr again."""
    while _ACTIVE:
        _ACTIVE.pop().stop()
