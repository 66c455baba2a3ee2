"""A store that misbehaves: replies swallowed, connections reset, requests delayed (moto behind a proxy).

Each store call is bounded (``storage.call_timeout_s``, retries included), a lost reply to the
lease's create is recognised as the job's own lease, a job stuck on a call stops renewing its
lease, and a job that cannot make progress exits with the storage code, 4. The timeouts are
set small by config, so each case takes seconds; the guards (``HANG_GUARD_S``) only catch a hang.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from storage_fault_proxy import Fault, FaultProxy
from storage_s3 import REGION, job_environment, list_keys, read_json, upload_images

from pipeline.config import StorageConfig
from pipeline.errors import OutputInUseError, StorageError
from pipeline.outputs import layout, lease
from pipeline.run.job import run_job
from pipeline.storage import s3_retries

pytestmark = pytest.mark.slow

HANG_GUARD_S = 120  # far above the few seconds each case takes; without the bounds they hang for minutes
LEASE_KEY = r"/out/_lease/epoch-\d+\.json$"
MANIFEST_KEY = r"/out/_SUCCESS$"
# Small bounds: one request gets 1 s to answer, 2 tries, at most 3 s in all.
BOUNDED = {
    "storage__read_timeout_s": 1,
    "storage__connect_timeout_s": 1,
    "storage__max_attempts": 2,
    "storage__call_timeout_s": 3,
}


def storage_via(proxy: FaultProxy, **settings: Any) -> StorageConfig:
    """Storage settings that reach moto through ``proxy``."""
    values = {
        "endpoint_url": proxy.url,
        "region": REGION,
        **{k.removeprefix("storage__"): v for k, v in settings.items()},
    }
    return StorageConfig.model_validate(values)


def in_thread(function: Any, *args: Any) -> Any:
    """Call ``function`` in a thread; fail (rather than hang the session) if it outlasts the guard."""
    result: list[Any] = []

    def call() -> None:
        try:
            result.append(("ok", function(*args)))
        except Exception as exc:  # the test looks at what was raised
            result.append(("raised", exc))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    assert result, f"{function.__name__} still blocked after {HANG_GUARD_S}s: a store call is unbounded"
    return result[0]


class TestLeaseCreate:
    def test_lost_reply_to_the_create_is_our_own_lease(self, moto, bucket):
        """The create reached the store, its reply did not: the job finds its own token there and goes on."""
        proxy = FaultProxy(
            moto.endpoint, every=0, faults=[Fault("swallow", LEASE_KEY, "PUT", "If-None-Match", 1)]
        )
        proxy.start()
        try:
            location = layout.OutputLocation.open(f"s3://{bucket}/out", storage_via(proxy, **BOUNDED))
            outcome, held = in_thread(lease.Lease.acquire, location, 60)
        finally:
            proxy.stop()
        assert proxy.hits("swallow") == 1
        assert outcome == "ok", held
        assert held.holder.epoch == 1
        direct = layout.OutputLocation.open(
            f"s3://{bucket}/out",
            StorageConfig.model_validate({"endpoint_url": moto.endpoint, "region": REGION}),
        )
        with pytest.raises(OutputInUseError, match=f"pid {held.holder.pid}"):
            lease.Lease.acquire(direct, 60)  # and it holds the output against everyone else
        held.location = direct
        held.release()

    def test_a_create_that_never_answers_is_a_storage_error(self, moto, bucket):
        """No reply to the create, nor to reading it back: exit 4 within the call's deadline, not a hang."""
        proxy = FaultProxy(moto.endpoint, every=0, faults=[Fault("swallow", LEASE_KEY)])
        proxy.start()
        try:
            location = layout.OutputLocation.open(
                f"s3://{bucket}/out", storage_via(proxy, **{**BOUNDED, "storage__read_timeout_s": 30})
            )
            outcome, error = in_thread(lease.Lease.acquire, location, 60)
        finally:
            proxy.stop()
        assert outcome == "raised"
        assert isinstance(error, StorageError), error
        assert error.exit_code == 4
        assert "storage.call_timeout_s" in str(error)


class TestBoundedCalls:
    def test_each_call_is_bounded_and_its_retries_counted(self, moto, bucket):
        """Resets, 503s and delays are retried and counted; a call never answered stops at its deadline."""
        faults = [
            # Two resets: aiohttp resends an idempotent request once by itself, unseen; then botocore retries.
            Fault("reset", r"/out/a$", "PUT", times=2),
            Fault("slow_down", r"/out/b$", "PUT", times=1),
            Fault("delay", r"/out/c$", "PUT", times=1, delay_s=2.5),  # past the 1 s read timeout once
            Fault("swallow", r"/out/d$"),
        ]
        proxy = FaultProxy(moto.endpoint, every=0, faults=faults).start()
        try:
            location = layout.OutputLocation.open(
                f"s3://{bucket}/out",
                storage_via(proxy, **{**BOUNDED, "storage__max_attempts": 3, "storage__call_timeout_s": 6}),
            )
            before = s3_retries.retries()
            for name in ("a", "b", "c"):
                location.write_bytes(name, name.encode())
            counted = s3_retries.retries() - before
            outcome, error = in_thread(location.write_bytes, "d", b"d")
            written = [location.read_bytes(name) for name in ("a", "b", "c")]
        finally:
            proxy.stop()
        assert written == [b"a", b"b", b"c"]
        assert counted == 3  # botocore's retries: one for each fault (the reset's second), no more
        assert outcome == "raised"
        assert isinstance(error, StorageError)
        assert "no answer within 6s (storage.call_timeout_s)" in str(error)


def start_cli(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m pipeline run`` in its own process group, stdout and stderr to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config_path)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=job_environment(),
        cwd=config_path.parent,
        start_new_session=True,
    )


def summary_of(s3: Any, bucket: str) -> dict[str, Any]:
    """The one run summary under the output."""
    keys = [key for key in list_keys(s3, bucket, "out/") if key.startswith("out/_summary-")]
    assert len(keys) == 1, keys
    return read_json(s3, bucket, keys[0])


def manifest_write_swallowed() -> list[Fault]:
    """No reply to the manifest's PUT and read-back; the check before the lease (a HEAD) is answered."""
    return [Fault("swallow", MANIFEST_KEY, method) for method in ("PUT", "GET")]


class TestManifestWrite:
    def test_manifest_that_never_answers_exits_4_and_lets_go(
        self, s3, bucket, s3_config, write_config, tmp_path, moto
    ):
        """No reply to the manifest's PUT nor to its read-back: exit 4 in bounded time, the lease released."""
        upload_images(s3, bucket, "in", 6, broken=False)
        proxy = FaultProxy(moto.endpoint, every=0, faults=manifest_write_swallowed()).start()
        try:
            config = s3_config(
                bucket, storage__endpoint_url=proxy.url, **{**BOUNDED, "storage__read_timeout_s": 30}
            )
            log = tmp_path / "job.log"
            job = start_cli(write_config(config), log)
            try:
                code = job.wait(timeout=HANG_GUARD_S + 60)
            except subprocess.TimeoutExpired:
                job.kill()
                pytest.fail(f"the job hung on the manifest's write:\n{log.read_text()[-3000:]}")
        finally:
            proxy.stop()
        text = log.read_text(errors="replace")
        assert code == 4, text[-3000:]
        assert "_SUCCESS" in text.strip().splitlines()[-1]
        summary = summary_of(s3, bucket)
        assert summary["status"] == "failed"
        assert "storage.call_timeout_s" in summary["error"]
        assert not list_keys(s3, bucket, "out/_lease/")  # released: the next job need not wait

    def test_manifest_whose_reply_was_lost_is_read_back_and_committed(
        self, ray_session, s3, bucket, s3_config, moto
    ):
        """The manifest's PUT landed but its reply was lost: it reads back equal, so the run commits."""
        upload_images(s3, bucket, "in", 6, broken=False)
        proxy = FaultProxy(
            moto.endpoint, every=0, faults=[Fault("swallow", MANIFEST_KEY, "PUT", times=1)]
        ).start()
        try:
            config = s3_config(
                bucket, storage__endpoint_url=proxy.url, **{**BOUNDED, "storage__read_timeout_s": 30}
            )
            summary = run_job(config, registry=CollectorRegistry())
        finally:
            proxy.stop()
        assert proxy.hits("swallow") == 1
        assert summary.status == "succeeded"
        assert read_json(s3, bucket, "out/_SUCCESS")["run_id"] == summary.run_id

    def test_a_job_stuck_on_a_call_stops_renewing_its_lease(
        self, s3, bucket, s3_config, write_config, tmp_path, moto
    ):
        """A call hanging past resources.stall_timeout_s stops the lease renewal: another job may take it."""
        upload_images(s3, bucket, "in", 6, broken=False)
        proxy = FaultProxy(moto.endpoint, every=0, faults=manifest_write_swallowed()).start()
        log = tmp_path / "job.log"
        taken = None
        try:
            # The stall timeout outlasts a cold actor's start on a loaded machine (the write's own
            # stall check would end the job first); the stuck call outlasts the stall timeout.
            settings = {**BOUNDED, "storage__read_timeout_s": 60, "storage__call_timeout_s": 35}
            config = s3_config(
                bucket,
                storage__endpoint_url=proxy.url,
                resources__stall_timeout_s=30,
                output__lease_seconds=3,
                **settings,
            )
            job = start_cli(write_config(config), log)
            direct = layout.OutputLocation.open(
                f"s3://{bucket}/out",
                StorageConfig.model_validate({"endpoint_url": moto.endpoint, "region": REGION}),
            )
            deadline = time.monotonic() + HANG_GUARD_S
            while taken is None and job.poll() is None and time.monotonic() < deadline:
                if proxy.hits("swallow"):
                    try:
                        taken = lease.Lease.acquire(direct, 600)
                    except OutputInUseError:
                        time.sleep(0.5)
                else:
                    time.sleep(0.2)
            still_running = job.poll() is None
            code = job.wait(timeout=HANG_GUARD_S)
        finally:
            proxy.stop()
        text = log.read_text(errors="replace")
        assert taken is not None, f"the stuck job kept its lease:\n{text[-3000:]}"
        assert still_running, "the lease was taken only after the job ended"
        assert code == 4, text[-3000:]
        assert "stopped renewing" in text
        assert list_keys(s3, bucket, "out/_lease/") == [f"out/{lease._epoch_name(taken.holder.epoch)}"]
        taken.release()
