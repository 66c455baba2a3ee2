"""What many tests need and used to write each for itself: a free port, the CLI as a process, a poller,
the parts of a local output that are completely written.

Importable from every test folder as ``helpers``: the suite's root conftest (tests/conftest.py)
is in a folder that is not a package, so pytest puts tests/ on ``sys.path``, as it does for
each test folder's own modules (``storage_s3``, ``monitoring_parts``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

T = TypeVar("T")
PENDING = ".pending.parquet"  # a checkpoint Ray Data has not committed yet: its part may be partial


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 300,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline ARGV`` as a process of its own, to the end; stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=timeout_s,
        check=False,
        cwd=cwd,
    )


def wait_for_parts(
    found: Callable[[], T],
    enough: Callable[[T], bool],
    process: subprocess.Popen[bytes],
    *,
    timeout_s: float = 300,
    interval_s: float = 0.2,
    log: Path | None = None,
) -> T:
    """Poll ``found()`` until ``enough`` of it (parts written: no fixed sleep); fail if ``process`` ends.

    Raises AssertionError naming the job's exit code (and the tail of ``log``) when the job
    ends before, TimeoutError when nothing enough appears within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log else ""
            msg = f"job ended (rc {process.returncode}) before enough parts were written:\n{tail}"
            raise AssertionError(msg)
        value = found()
        if enough(value):
            return value
        time.sleep(interval_s)
    tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log else ""
    raise TimeoutError(f"not enough parts within {timeout_s:.0f}s:\n{tail}")


def committed_checkpoints(out: Path) -> list[Path]:
    """A local output's checkpoint files whose two-phase commit finished: each vouches for a whole part."""
    folder = out / "_checkpoint"
    return [p for p in folder.rglob("*.parquet") if not p.name.endswith(PENDING)] if folder.exists() else []


def whole_parts(out: Path) -> dict[str, int]:
    """Each completely written part under ``out/data/`` (its checkpoint committed) and its rows.

    Parts are ``part-<run>-<write>-<task>-<n>.parquet``; Ray Data commits the checkpoint
    ``<part-run-write-task>.parquet`` once they are whole (a part being written may be empty).
    """
    import pyarrow.parquet as pq

    whole = {p.name.removesuffix(".parquet") for p in committed_checkpoints(out)}
    return {
        p.name: pq.ParquetFile(p).metadata.num_rows
        for p in sorted(out.glob("data/*.parquet"))
        if p.name.rsplit("-", 1)[0] in whole
    }


def kill_group(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGKILL a process started in its own session, and its whole group; wait until none of it is left."""
    import contextlib
    import os
    import signal

    with contextlib.suppress(ProcessLookupError):  # already gone: the caller's checks will say why
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes of group {process.pid} survived SIGKILL")
