"""Pack a large wheel small enough to carry to the GPU machine, and rebuild it there.

Used by scripts/gpu-wheels.sh (``pack``, on the machine with PyPI) and scripts/gpu-install.sh
(``unpack``, ``fallbacks``, ``reqcheck``, on the GPU machine). Python >= 3.10; standard library
only, except that ``fallbacks`` and ``reqcheck`` import packaging.

Why: ray's cp312 wheel is ~79 MB, over what one device call carries. Its members are
deflate-compressed one by one, and its biggest member (ray/jars/ray_dist.jar, 31 MB, only for Java
workers) is itself a zip. ``pack`` writes every member's *uncompressed* bytes into one solid
``.tar.xz``, expanding nested ``.jar`` zips the same way, with an index of the zip structure
(order, compression type, timestamps, permissions, sha256 of every member). ``unpack`` rebuilds
the wheel from that and checks every member's sha256: the wheel's files are byte-for-byte the
originals, except that a nested jar is re-zipped (same entries, same bytes inside, different
deflate stream), so the jar's own hash in the wheel's RECORD no longer matches. pip does not check
RECORD hashes on install; nothing in a Python-only Ray job opens the jar.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import sys
import tarfile
import time
import zipfile
from pathlib import Path

INDEX = "INDEX.json"
NESTED_SUFFIXES = (".jar",)
FORMAT = 1
EXTRAS = ("", "data")  # requirements checked: unconditional ones and ray's `data` extra


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _index_zip(zf: zipfile.ZipFile, prefix: str, files: dict[str, bytes]) -> list[dict]:
    """Record the structure of ``zf``; put each member's bytes into ``files`` under ``prefix``."""
    entries = []
    for info in zf.infolist():
        data = zf.read(info)
        entry = {
            "name": info.filename,
            "compress_type": info.compress_type,
            "date_time": list(info.date_time),
            "external_attr": info.external_attr,
            "create_system": info.create_system,
            "sha256": _sha256(data),
            "size": len(data),
        }
        nested = None
        if info.filename.endswith(NESTED_SUFFIXES) and data[:4] == b"PK\x03\x04":
            try:
                nested = zipfile.ZipFile(io.BytesIO(data))
            except zipfile.BadZipFile:
                nested = None
        if nested is not None:
            entry["nested"] = _index_zip(nested, f"{prefix}{info.filename}.d/", files)
        elif not info.is_dir():
            files[f"{prefix}{info.filename}"] = data
        entries.append(entry)
    return entries


def pack(wheel: Path, out: Path, preset: int) -> None:
    started = time.monotonic()
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf:
        index = {
            "format": FORMAT,
            "wheel": wheel.name,
            "wheel_sha256": _sha256(wheel.read_bytes()),
            "entries": _index_zip(zf, "f/", files),
        }
    tmp = out.with_name(out.name + ".part")
    with (
        lzma.open(tmp, "wb", preset=preset) as xz,
        tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        blob = json.dumps(index, indent=0).encode()
        _add(tar, INDEX, blob)
        # Similar files next to each other compress better in one solid stream.
        for name in sorted(files, key=lambda n: (Path(n).suffix, n)):
            _add(tar, name, files[name])
    tmp.replace(out)
    print(
        f"packed {wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB -> {out.name} "
        f"{out.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - started:.0f}s"
    )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _build_zip(entries: list[dict], prefix: str, files: dict[str, bytes], level: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for entry in entries:
            if "nested" in entry:
                data = _build_zip(entry["nested"], f"{prefix}{entry['name']}.d/", files, level)
            elif entry["name"].endswith("/"):
                data = b""
            else:
                data = files.pop(f"{prefix}{entry['name']}")
                if _sha256(data) != entry["sha256"]:
                    raise SystemExit(f"error: {prefix}{entry['name']}: sha256 differs from the packed index")
            info = zipfile.ZipInfo(entry["name"], date_time=tuple(entry["date_time"]))
            info.compress_type = entry["compress_type"]
            info.external_attr = entry["external_attr"]
            info.create_system = entry["create_system"]
            kwargs = {"compresslevel": level} if entry["compress_type"] == zipfile.ZIP_DEFLATED else {}
            zf.writestr(info, data, **kwargs)
    return buf.getvalue()


def unpack(archive: Path, outdir: Path, level: int) -> Path:
    started = time.monotonic()
    files: dict[str, bytes] = {}
    index = None
    try:
        with tarfile.open(archive, mode="r:xz") as tar:
            for member in tar:
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                data = handle.read()
                if member.name == INDEX:
                    index = json.loads(data)
                else:
                    files[member.name] = data
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise SystemExit(f"error: {archive} is damaged or truncated: {exc}") from exc
    if index is None or index.get("format") != FORMAT:
        raise SystemExit(f"error: {archive} has no {INDEX} of format {FORMAT}")
    data = _build_zip(index["entries"], "f/", files, level)
    if files:
        raise SystemExit(f"error: {archive} holds {len(files)} files its index does not name")
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / index["wheel"]
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    print(
        f"rebuilt {out.name} ({len(data) / 2**20:.1f} MiB, every member's sha256 checked) "
        f"in {time.monotonic() - started:.0f}s"
    )
    return out


def reqcheck(wheels: list[Path]) -> int:
    """Requirements of ``wheels`` (no extras but ``data``) that the current interpreter's packages miss.

    Prints one line per requirement: ok, or MISSING / TOO-OLD with what is there. Run it with the
    install target on PYTHONPATH. Returns how many are not met.
    """
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    bad = 0
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            lines = zf.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in EXTRAS):
                continue
            try:
                have = metadata.version(canonicalize_name(req.name))
            except metadata.PackageNotFoundError:
                print(f"  MISSING  {req} (needed by {wheel.name})")
                bad += 1
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                print(f"  TOO-OLD  {req} (needed by {wheel.name}); found {req.name} {have}")
                bad += 1
    return bad


def fallbacks(wheels: list[Path], candidates: list[Path]) -> None:
    """Print each candidate wheel whose package this interpreter lacks, or has too old for ``wheels``."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    specs: dict[str, list[Requirement]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            for line in zf.read(meta).decode().splitlines():
                if line.startswith("Requires-Dist:"):
                    req = Requirement(line.split(":", 1)[1].strip())
                    if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in EXTRAS):
                        specs.setdefault(canonicalize_name(req.name), []).append(req)
    for candidate in candidates:
        name = canonicalize_name(candidate.name.split("-")[0])
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            print(candidate)
            continue
        if any(r.specifier and not r.specifier.contains(have, prereleases=True) for r in specs.get(name, [])):
            print(candidate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="wheel -> .tar.xz")
    p.add_argument("wheel", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--preset", type=int, default=9)
    u = sub.add_parser("unpack", help=".tar.xz -> wheel in OUTDIR")
    u.add_argument("archive", type=Path)
    u.add_argument("outdir", type=Path)
    u.add_argument("--level", type=int, default=1, help="deflate level of the rebuilt wheel")
    r = sub.add_parser("reqcheck", help="list requirements of wheels that are not met")
    r.add_argument("wheels", type=Path, nargs="+")
    f = sub.add_parser("fallbacks", help="which fallback wheels this interpreter needs")
    f.add_argument("wheels", type=Path, nargs="+")
    f.add_argument("--candidates", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    if args.cmd == "fallbacks":
        fallbacks(args.wheels, args.candidates)
    elif args.cmd == "pack":
        pack(args.wheel, args.out, args.preset)
    elif args.cmd == "unpack":
        unpack(args.archive, args.outdir, args.level)
    else:
        return 1 if reqcheck(args.wheels) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
