"""One writer per output: a lease on the output, taken before its state is read.

The lease is a small JSON file ``_lease/epoch-<n>.json`` under the output, created
only if it does not exist yet (``O_EXCL`` via a hard link on local filesystems, a
conditional PUT with ``If-None-Match: *`` on S3), so of two jobs racing for the same
epoch exactly one wins. To take the output a job:

1. lists ``_lease/`` and reads the highest epoch; if that lease is live (not expired,
   and not held by a dead process on this host), the job stops with
   :class:`~pipeline.errors.OutputInUseError` naming the holder;
2. otherwise creates epoch ``n + 1``; losing that race is the same refusal;
3. deletes the older epochs, so a holder that outlived its lease finds its file gone.

The holder renews its lease (a plain overwrite of its own file) from a background
thread every third of ``output.lease_seconds`` and checks, at every renewal and right
before it deletes or commits anything, that its epoch is still the highest and still
carries its token. A job that was paused past its expiry and overtaken therefore finds
out before it commits. A crashed job's lease expires after ``output.lease_seconds``;
a job killed on this host is recognised at once (its pid is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.errors import OutputInUseError, StorageError
from pipeline.output import LEASE_DIR

if TYPE_CHECKING:
    from pipeline.output import OutputLocation

_EPOCH = re.compile(r"^epoch-(\d+)\.json$")
RENEWALS_PER_LEASE = 3
ACQUIRE_TRIES = 3


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lease, as written in its file."""

    epoch: int
    token: str
    host: str
    pid: int
    run_id: str | None
    acquired_at: float
    expires_at: float

    def describe(self) -> str:
        """``run 'X' (host h, pid p), lease until <UTC time>`` for messages."""
        run = f"run {self.run_id!r}" if self.run_id else "a job that has not chosen its run id yet"
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at))
        return f"{run} (host {self.host}, pid {self.pid}), lease until {until}"

    def is_live(self, now: float) -> bool:
        """Not expired, and not held by a process of this host that no longer exists."""
        if self.expires_at <= now:
            return False
        return not (self.host == socket.gethostname() and not _pid_alive(self.pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _epoch_name(epoch: int) -> str:
    return f"{LEASE_DIR}/epoch-{epoch:06d}.json"


class Lease:
    """The lease this job holds on an output; :meth:`acquire` takes it."""

    def __init__(self, location: OutputLocation, holder: Holder, duration_s: float) -> None:
        self.location = location
        self.holder = holder
        self.duration_s = duration_s
        self.lost: str | None = None  # why the lease was lost, once it was
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, location: OutputLocation, duration_s: float) -> Lease:
        """Take the output or raise :class:`OutputInUseError` naming who holds it."""
        for _ in range(ACQUIRE_TRIES):
            epochs = _epochs(location)
            top = max(epochs, default=0)
            current = _read(location, top) if top else None
            now = time.time()
            if current is not None and current.is_live(now):
                raise _in_use(location, current)
            holder = Holder(
                epoch=top + 1,
                token=uuid.uuid4().hex,
                host=socket.gethostname(),
                pid=os.getpid(),
                run_id=None,
                acquired_at=now,
                expires_at=now + duration_s,
            )
            uri = location.uri_of(_epoch_name(holder.epoch))
            with storage.translate_errors("create", uri, location.storage_config):
                created = storage.create_exclusive(location.fs, uri, _encode(holder))
            if created:
                lease = cls(location, holder, duration_s)
                for old in epochs:
                    lease._delete_quietly(old)
                return lease
        current = _read(location, max(_epochs(location), default=0))
        raise _in_use(location, current)

    def name_run(self, run_id: str) -> None:
        """Record the run id the holder chose (so a refused job can name it)."""
        self.renew(run_id=run_id)

    def renew(self, run_id: str | None = None) -> None:
        """Extend the lease; mark it lost if another job has taken the output."""
        self.check()
        now = time.time()
        self.holder = replace(
            self.holder, expires_at=now + self.duration_s, run_id=run_id or self.holder.run_id
        )
        self.location.write_bytes(_epoch_name(self.holder.epoch), _encode(self.holder))

    def check(self) -> None:
        """Raise :class:`OutputInUseError` unless this job still holds the output."""
        if self.lost is None:
            top = max(_epochs(self.location), default=0)
            current = _read(self.location, self.holder.epoch)
            if top != self.holder.epoch or current is None or current.token != self.holder.token:
                other = _read(self.location, top) if top else None
                self.lost = (
                    f"this job lost its lease on {self.location.uri} to "
                    f"{other.describe() if other else 'another job'}; stopped before writing more"
                )
        if self.lost is not None:
            raise OutputInUseError(self.lost)

    def keep_alive(self) -> None:
        """Renew in a daemon thread until :meth:`release`; a failure is kept in :attr:`lost`."""

        def run() -> None:
            while not self._stop.wait(self.duration_s / RENEWALS_PER_LEASE):
                try:
                    self.renew()
                except OutputInUseError:
                    return
                except StorageError as exc:  # try again next time, but stop before anyone may take over
                    if time.time() >= self.holder.expires_at - self.duration_s / RENEWALS_PER_LEASE:
                        self.lost = f"cannot renew the lease on {self.location.uri} before it expires: {exc}"
                        return

        self._thread = threading.Thread(target=run, name="output-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and delete the lease file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.lost is None:
            try:
                self.check()
            except (OutputInUseError, StorageError):
                return
            self._delete_quietly(self.holder.epoch)

    def __enter__(self) -> Lease:  # noqa: PYI034  # Lease is final
        self.keep_alive()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _delete_quietly(self, epoch: int) -> None:
        with contextlib.suppress(FileNotFoundError, StorageError):  # gone, or the next holder deletes it
            self.location.delete([_epoch_name(epoch)])


def _encode(holder: Holder) -> bytes:
    return json.dumps(asdict(holder), sort_keys=True).encode()


def _epochs(location: OutputLocation) -> list[int]:
    return sorted(
        int(match.group(1))
        for name in location.list_files(LEASE_DIR)
        if (match := _EPOCH.match(posixpath.basename(name)))
    )


def _read(location: OutputLocation, epoch: int) -> Holder | None:
    """The holder recorded in an epoch's file; None if it is gone or unreadable (a dead write)."""
    try:
        data: dict[str, Any] = json.loads(location.read_bytes(_epoch_name(epoch)))
        return Holder(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _in_use(location: OutputLocation, holder: Holder | None) -> OutputInUseError:
    who = holder.describe() if holder else "another job"
    return OutputInUseError(
        f"output {location.uri} is in use by {who}: one writer at a time. Wait for it to finish; "
        f"if that job is dead, its lease expires by itself (output.lease_seconds), or delete "
        f"{location.uri_of(LEASE_DIR)} once you are sure nothing writes there"
    )
