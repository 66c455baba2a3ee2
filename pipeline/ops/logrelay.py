"""Every line written to the process's standard error, as one configured log line; Ray's off stdout.

Ray writes to the driver's stderr from places this package does not control: its C++ core
(glog lines), its Python loggers (tab-separated text), and the lines it forwards from
workers (``(MapWorker pid=12) {...}``, coloured). :func:`install` makes file descriptor 2
a pipe that a thread reads; :func:`parse` turns each line into a level, an event and fields
(a worker's JSON line keeps its own fields), and the line is logged through structlog, so
it is rendered, redacted and filtered like every other line. Log lines themselves go to
the original stderr (``logs.STDERR``). Lines Ray prints on every healthy run are demoted
to debug, each with the reason (:data:`DEMOTED`). :func:`stop` drains the pipes and puts
the original descriptors back.

Ray also prints to the driver's *stdout*: what workers print there, and the raylet's error
messages (``(raylet) A worker died or was killed ...``, in yellow), which stdout's readers
(the run summary's) would take for output. File descriptor 1 is relayed too: those lines
(:func:`is_ray_line`) are logged like stderr's, every other line goes to stdout unchanged.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from typing import Any

from pipeline.ops import logs

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
# Ray's own processes, printed without a pid: the raylet's errors, the autoscaler's events.
_RAY_PROCESS = re.compile(
    r"^\((?P<process>raylet|autoscaler)(?: [^)]*)?(?:, ip=(?P<ip>[^)]+))?\) (?P<rest>.*)$"
)
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
STDOUT_FD, STDERR_FD = 1, 2


def parse(text: str) -> tuple[str, str, dict[str, Any]]:
    """One stderr line as (level, event, fields)."""
    text = _ANSI.sub("", text).rstrip("\r\n")
    fields: dict[str, Any] = {}
    process = _RAY_PROCESS.match(text)
    if process:
        return _from_ray_process(process)
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


def _from_ray_process(found: re.Match[str]) -> tuple[str, str, dict[str, Any]]:
    """A raylet or autoscaler line: yellow in Ray's console, a warning (a worker died, a task retried)."""
    fields = {"worker": found["process"], "source": "ray"}
    if found["ip"]:
        fields["ip"] = found["ip"]
    return "warning", found["rest"], fields


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


def is_ray_line(text: str) -> bool:
    """Whether a line is one Ray forwarded (``(raylet) ...``, ``(MapWorker pid=12) ...``), colours aside."""
    text = _ANSI.sub("", text)
    return bool(_RAY_PROCESS.match(text) or _WORKER.match(text))


class _Relay:
    """The pipe on fd 2 (or 1) and the thread that reads it."""

    def __init__(self, fd: int = STDERR_FD) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self.fd = fd
        self.original = os.dup(fd)
        self.read_end, self.write_end = os.pipe()
        os.dup2(self.write_end, fd)
        self.out = os.fdopen(os.dup(self.original), "w", buffering=1, encoding="utf-8", errors="replace")
        self.logs_every_line = fd == STDERR_FD  # stdout: only Ray's lines
        if self.logs_every_line:
            logs.STDERR.real = self.out
        self.thread = threading.Thread(target=self._pump, name=f"fd{fd}-relay", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        pending, ended = b"", False
        while not ended:
            chunk = os.read(self.read_end, 65536)
            if not chunk:
                return
            pending += chunk
            ended = _END in pending  # stop() wrote it: what precedes it is all there is
            pending = pending.split(_END, 1)[0]
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._line(raw.decode("utf-8", errors="replace"))
        if pending:  # the last words, without a newline (stdout's may end so)
            self._line(pending.decode("utf-8", errors="replace"), end="")

    def _line(self, text: str, end: str = "\n") -> None:
        if self.logs_every_line or is_ray_line(text):
            if text.strip():
                emit(text)
            return
        try:
            self.out.write(text + end)
        except OSError:  # stdout's reader left (`| head`): its lines are not wanted any more
            return

    def stop(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.write(self.write_end, _END)
        self.thread.join(timeout=10)
        os.dup2(self.original, self.fd)
        if self.logs_every_line:
            logs.STDERR.real = None
        self.out.flush()


def emit(text: str) -> None:
    """Log one foreign stderr line."""
    level, event, fields = parse(text)
    log = logs.get_logger()
    getattr(log, level if level in _METHODS else "info")(event, **fields)


_METHODS = {"debug", "info", "warning", "error", "critical"}
_ACTIVE: list[_Relay] = []  # the process's relay, once installed


def install() -> None:
    """Relay fds 2 and 1 from now on (once per process; does nothing if already installed)."""
    if not _ACTIVE:
        _ACTIVE.extend([_Relay(STDERR_FD), _Relay(STDOUT_FD)])


def stop() -> None:
    """Relay what is still in the pipes (stdout's first), then write to the original descriptors again."""
    while _ACTIVE:
        _ACTIVE.pop().stop()
