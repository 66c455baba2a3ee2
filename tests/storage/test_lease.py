"""One writer per output: the lease on a local folder and on moto S3.

Two holders race for the same output; a crashed holder's lease lapses; a holder that
was overtaken finds out before it writes more.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import StorageConfig
from pipeline.errors import OutputInUseError
from pipeline.outputs import layout, lease

pytestmark = pytest.mark.slow  # the S3 half starts moto_server


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path: Path) -> layout.OutputLocation:
    """An empty output, on a local folder or on the moto server."""
    if request.param == "local":
        return layout.OutputLocation.open(str(tmp_path / "out"), StorageConfig())
    moto = request.getfixturevalue("moto")
    bucket = request.getfixturevalue("bucket")
    storage = StorageConfig.model_validate({"endpoint_url": moto.endpoint, "region": "us-east-1"})
    return layout.OutputLocation.open(f"s3://{bucket}/out", storage)


def test_second_holder_is_refused_naming_the_first(location):
    """While a lease is live, a second job is refused with the holder's run id and its own exit code."""
    first = lease.Lease.acquire(location, 60)
    first.name_run("run-A")
    with pytest.raises(OutputInUseError, match=r"is in use by run 'run-A' \(host .+, pid \d+\)") as caught:
        lease.Lease.acquire(location, 60)
    assert caught.value.exit_code == 7
    first.release()
    second = lease.Lease.acquire(location, 60)  # released: free again
    assert second.holder.epoch >= 1
    second.release()
    assert [name for name in location.list_files() if layout.is_lease(name)] == []


def test_exclusive_create_lets_exactly_one_win(location):
    """The primitive under the lease: of two creates of one name, one succeeds, and its bytes stay."""
    from pipeline.storage import atomic_writes

    uri = location.uri_of("_lease/epoch-000009.json")
    assert atomic_writes.create_exclusive(location.fs, uri, b'{"token": "a"}') is True
    assert atomic_writes.create_exclusive(location.fs, uri, b'{"token": "b"}') is False
    assert json.loads(location.read_bytes("_lease/epoch-000009.json")) == {"token": "a"}


def test_expired_lease_is_taken_over_and_the_old_holder_finds_out(location):
    """A holder that stopped renewing loses the output after its lease; it cannot commit after that."""
    stale = lease.Lease.acquire(location, 1)
    stale.name_run("run-old")
    time.sleep(1.2)
    fresh = lease.Lease.acquire(location, 60)
    assert fresh.holder.epoch == stale.holder.epoch + 1
    with pytest.raises(OutputInUseError, match="lost its lease"):
        stale.check()
    fresh.check()  # the new holder still holds it
    stale.release()  # must not delete the new holder's lease
    fresh.check()
    fresh.release()


def test_lease_of_a_dead_process_on_this_host_lapses_at_once(tmp_path: Path):
    """A job killed on this machine (its pid is gone) does not block the output until expiry."""
    location = layout.OutputLocation.open(str(tmp_path / "out"), StorageConfig())
    script = (
        "import sys; from pipeline.outputs import layout, lease; from pipeline.config import StorageConfig;"
        f"loc = layout.OutputLocation.open({str(tmp_path / 'out')!r}, StorageConfig());"
        "held = lease.Lease.acquire(loc, 3600); held.name_run('run-killed')"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)  # exits holding the lease
    taken = lease.Lease.acquire(location, 60)
    assert taken.holder.epoch == 2
    taken.release()


def test_renewal_keeps_a_short_lease_alive(location):
    """A holder that keeps renewing is never overtaken, however short its lease."""
    with lease.Lease.acquire(location, 1.5) as held:
        held.name_run("run-long")
        time.sleep(3.5)
        with pytest.raises(OutputInUseError, match="run-long"):
            lease.Lease.acquire(location, 60)
        assert held.lost is None
