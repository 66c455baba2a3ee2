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

A create whose reply was lost (the store wrote the file, the answer never came back) is
retried and refused as existing, or fails at its deadline: the job then reads the epoch back,
and a file holding its own token is its own lease.

The holder renews its lease (a plain overwrite of its own file) from a background
thread every third of ``output.lease_seconds`` and checks, at every renewal and right
before it deletes or commits anything, that its epoch is still the highest and still
carries its token. A job that was paused past its expiry and overtaken therefore finds
out before it commits (exit 7, naming the job that took over). A job that cannot renew
(the store refuses, or does not answer in time) stops before its lease could lapse, and
one stuck on a call to its output for longer than ``resources.stall_timeout_s`` stops
renewing, so the output is free again once the lease lapses: both exit 4, the storage
code. A crashed job's lease expires after ``output.lease_seconds``; a job killed on this
host is recognised at once (its pid is gone).
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
from pipeline.errors import OutputInUseError, PipelineError, StorageError
from pipeline.ops.logs import get_logger
from pipeline.outputs.layout import LEASE_DIR
from pipeline.storage import atomic_writes

if TYPE_CHECKING:
    from pipeline.outputs.layout import OutputLocation

_EPOCH = re.compile(r"^epoch-(\d+)\.json$")
RENEWALS_PER_LEASE = 3
# The holder stops once its lease has less than this fraction left unrenewed: past the renewal
# it missed, before anyone may take the output over.
STOP_BEFORE_LAPSE = 1 / 4
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

    def __init__(
        self,
        location: OutputLocation,
        holder: Holder,
        duration_s: float,
        stall_timeout_s: float | None = None,
    ) -> None:
        self.location = location
        self.holder = holder
        self.duration_s = duration_s
        self.stall_timeout_s = stall_timeout_s  # None: renew whatever the job's calls do
        # Why the job no longer holds the output, once it does not: OutputInUseError when another
        # job took it (exit 7), StorageError when this job could not renew or was stuck (exit 4).
        self.lost: PipelineError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(
        cls, location: OutputLocation, duration_s: float, stall_timeout_s: float | None = None
    ) -> Lease:
        """Take the output or raise :class:`OutputInUseError` naming who holds it.

        ``stall_timeout_s``: stop renewing once a call to the output has waited this long.
        """
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
            if _create(location, holder):
                lease = cls(location, holder, duration_s, stall_timeout_s)
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
        self._check_store()
        now = time.time()
        holder = replace(self.holder, expires_at=now + self.duration_s, run_id=run_id or self.holder.run_id)
        self.location.write_bytes(_epoch_name(holder.epoch), _encode(holder))
        self.holder = holder  # only once written: a renewal that failed extended nothing

    def check(self) -> None:
        """Raise (:attr:`lost`) unless the job still holds the output: its epoch on top, renewed in time."""
        self._check_store()
        self.check_renewed()

    def check_renewed(self) -> None:
        """Raise :attr:`lost`, or a StorageError if the lease is about to lapse unrenewed (no storage call).

        Called every second while parts are written, and before the commit: a renewal that got
        no answer must stop the job before another may take the output over.
        """
        left = self.holder.expires_at - time.time()
        if self.lost is None and left < self.duration_s * STOP_BEFORE_LAPSE:
            self._lose(
                StorageError(
                    f"cannot renew the lease on {self.location.uri}: no renewal succeeded for "
                    f"{self.duration_s - left:.0f}s (output.lease_seconds={self.duration_s:g}); stopped "
                    "before the lease lapses"
                )
            )
        if self.lost is not None:
            raise self.lost

    def _found_ours(self) -> tuple[bool, int, Holder | None]:
        """Whether the highest epoch is this job's, with its token; the highest epoch; what ours holds."""
        top = max(_epochs(self.location), default=0)
        current = _read(self.location, self.holder.epoch)
        ours = top == self.holder.epoch and current is not None and current.token == self.holder.token
        return ours, top, current

    def _check_store(self) -> None:
        if self.lost is None:
            ours, top, current = self._found_ours()
            if not ours:
                self._lose(OutputInUseError(self._why_lost(top, current)))
        if self.lost is not None:
            raise self.lost

    def _why_lost(self, top: int, current: Holder | None) -> str:
        """What happened to the lease, as it is found: overtaken, or its file gone or replaced."""
        where = self.location.uri_of(_epoch_name(self.holder.epoch))
        other = _read(self.location, top) if top > self.holder.epoch else None
        if other is not None:
            return (
                f"this job lost its lease on {self.location.uri} to {other.describe()} (it was not "
                "renewed in time); stopped before writing more"
            )
        what = "is gone" if current is None else f"holds another job's token ({current.describe()})"
        return (
            f"this job's lease file {where} {what}: it was deleted or replaced while the job ran, so "
            "it cannot be the only writer; stopped before writing more"
        )

    def _lose(self, error: PipelineError) -> None:
        if self.lost is None:
            self.lost = error
            get_logger(run_id=self.holder.run_id, stage="driver").error("output lease lost", error=str(error))

    def keep_alive(self) -> None:
        """Renew in a daemon thread until :meth:`release`; a failure is kept in :attr:`lost`."""
        period = self.duration_s / RENEWALS_PER_LEASE

        def run() -> None:
            while not self._stop.wait(period):
                stuck = self._stuck_call()
                if stuck is not None:
                    self._lose(stuck)
                    return
                try:
                    self.renew()
                except OutputInUseError:
                    return
                except StorageError as exc:  # try again next time, but stop before anyone may take over
                    if time.time() >= self.holder.expires_at - period:
                        self._lose(
                            StorageError(
                                f"cannot renew the lease on {self.location.uri} before it expires: {exc}"
                            )
                        )
                        return

        self._thread = threading.Thread(target=run, name="output-lease", daemon=True)
        self._thread.start()

    def _stuck_call(self) -> StorageError | None:
        """Why to stop renewing: a call to the output (not the renewal's) waiting past the stall timeout."""
        if self.stall_timeout_s is None:
            return None
        waiting = self.location.calls.longest_wait(other_than=threading.get_ident())
        if waiting is None or waiting[1] <= self.stall_timeout_s:
            return None
        what, seconds = waiting
        return StorageError(
            f"no answer from the store for {seconds:.0f}s to: {what} (resources.stall_timeout_s="
            f"{self.stall_timeout_s:g}); this job stopped renewing its lease on {self.location.uri}, so "
            "another job can take the output once it lapses"
        )

    def release(self) -> None:
        """Stop renewing and delete the lease file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if isinstance(self.lost, OutputInUseError):
            return  # the file, if any, is another job's now
        try:
            ours = self._found_ours()[0]
        except StorageError:
            return  # it lapses by itself
        if ours:  # also after a failed renewal: the job is ending, and nobody took over
            self._delete_quietly(self.holder.epoch)

    def __enter__(self) -> Lease:  # noqa: PYI034  # Lease is final
        self.keep_alive()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _delete_quietly(self, epoch: int) -> None:
        with contextlib.suppress(FileNotFoundError, StorageError):  # gone, or the next holder deletes it
            self.location.delete([_epoch_name(epoch)])


def _create(location: OutputLocation, holder: Holder) -> bool:
    """Create ``holder``'s epoch file; True if this job now holds it.

    When the create's reply is lost, botocore's retry is refused (the file exists: ours) or
    the call fails at its deadline. Either way the file is read back: this job's token there
    means the create landed, and the lease is this job's.
    """
    name = _epoch_name(holder.epoch)
    uri = location.uri_of(name)
    try:
        with storage.translate_errors("create", uri, location.storage_config):
            if atomic_writes.create_exclusive(location.fs, uri, _encode(holder)):
                return True
    except StorageError as failed:
        try:
            found = _read(location, holder.epoch)
        except StorageError:
            raise failed from None
        if found is None:  # the create did not land: the store's failure stands
            raise
        return found.token == holder.token  # else another job won the epoch
    found = _read(location, holder.epoch)
    return found is not None and found.token == holder.token


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
