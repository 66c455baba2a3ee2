"""scripts/gpu_wheelpack.py: a wheel packed small for the GPU machine comes back with the same files."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "scripts" / "gpu_wheelpack.py"


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PACK), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def test_pack_then_unpack_gives_back_every_member_and_the_nested_jar(tmp_path):
    """Members (a nested jar's entries too) are byte-identical after the trip; order is kept."""
    rng = np.random.default_rng(3)
    jar = _zip({"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\n", "io/ray/A.class": rng.bytes(5000)})
    members = {
        "demo/__init__.py": b"VALUE = 1\n" * 200,
        "demo/_native.so": rng.bytes(20_000),
        "demo/jars/dist.jar": jar,
        "demo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
    }
    wheel = tmp_path / "demo-1.0-cp312-cp312-manylinux2014_x86_64.whl"
    wheel.write_bytes(_zip(members))
    packed = tmp_path / (wheel.name + ".tar.xz")
    assert _run("pack", wheel, packed).returncode == 0
    result = _run("unpack", packed, tmp_path / "rebuilt")
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "rebuilt" / wheel.name) as rebuilt:
        assert rebuilt.namelist() == list(members)
        for name, data in members.items():
            if name.endswith(".jar"):
                inner, old = (zipfile.ZipFile(io.BytesIO(blob)) for blob in (rebuilt.read(name), data))
                assert inner.namelist() == old.namelist()
                assert all(inner.read(n) == old.read(n) for n in old.namelist())
            else:
                assert rebuilt.read(name) == data, name


def test_a_truncated_archive_is_refused_with_a_message(tmp_path):
    """A pack cut short in transit is an error naming the file, never a half-built wheel."""
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(_zip({"demo/__init__.py": np.random.default_rng(1).bytes(50_000)}))
    packed = tmp_path / "demo.tar.xz"
    assert _run("pack", wheel, packed).returncode == 0
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    result = _run("unpack", packed, tmp_path / "rebuilt")
    assert result.returncode != 0
    assert "damaged or truncated" in result.stderr
    assert not list(tmp_path.rglob("rebuilt/*.whl"))
