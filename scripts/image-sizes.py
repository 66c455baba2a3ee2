#!/usr/bin/env python3
"""Sum the installed size of the Python packages each image carries (no Docker engine needed).

Each image (docker/Dockerfile, targets cpu and gpu) installs pyproject.toml's dependencies plus
ray[data,default]; the gpu target adds the gpu extra and takes torch from PyPI, whose Linux
wheels require the CUDA libraries as packages (nvidia-*, triton); the cpu target takes torch's
CPU wheels, which require none of them. This walks those requirements through the packages
installed in the running environment (the same pinned versions: scripts/setup.sh installs PyPI's
CUDA torch) and adds up the files each package's RECORD lists, as installed. The CPU image's
torch is not installed here (its index is not reachable from this machine): its size is
estimated as the CUDA wheel's files less its CUDA-only libraries, and printed as an estimate.

    .venv/bin/python scripts/image-sizes.py [--json]

Prints per image: the packages, their total, and the largest ones. Base image and interpreter
layers are not counted (the same ~0.2 GB in both images).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# Torch's Linux wheels on PyPI require these for CUDA; its CPU wheels require none of them.
CUDA_PACKAGES = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")
# Files of the CUDA torch wheel that its CPU wheel does not have (the CPU estimate leaves them out).
CUDA_ONLY_TORCH_FILES = re.compile(
    r"^torch/lib/lib(torch_cuda|c10_cuda|caffe2_nvrtc|torch_nvshmem|nvrtc|cudnn)"
)


def roots(image: str) -> list[Requirement]:
    """What the image's Dockerfile target installs: pyproject's dependencies (+ gpu extra) and ray."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(dep) for dep in project["dependencies"]]
    if image == "gpu":
        requirements += [Requirement(dep) for dep in project["optional-dependencies"]["gpu"]]
    return requirements


def closure(image: str) -> dict[str, metadata.Distribution]:
    """Every distribution the image installs, by canonical name, walked through installed metadata."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, str]] = set()  # (distribution, extra) already expanded
    pending = [
        requirement
        for requirement in roots(image)
        if requirement.marker is None or requirement.marker.evaluate()
    ]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if image == "cpu" and CUDA_PACKAGES.match(name):
            continue
        extras = [extra for extra in ("", *requirement.extras) if (name, extra) not in seen]
        if not extras:
            continue
        seen.update((name, extra) for extra in extras)
        found[name] = metadata.distribution(requirement.name)
        for requires in found[name].requires or []:
            dependency = Requirement(requires)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                pending.append(dependency)
    return found


def installed_bytes(distribution: metadata.Distribution, *, cpu_torch: bool = False) -> int:
    """Bytes of the files the distribution's RECORD lists (the CUDA-only torch files left out for cpu)."""
    total = 0
    for file in distribution.files or []:
        if cpu_torch and CUDA_ONLY_TORCH_FILES.match(str(file)):
            continue
        path = Path(str(distribution.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def measure(image: str) -> dict[str, object]:
    """{image, packages: {name: bytes}, total_bytes, estimated} for one image."""
    sizes = {
        name: installed_bytes(dist, cpu_torch=image == "cpu" and name == "torch")
        for name, dist in sorted(closure(image).items())
    }
    return {
        "image": image,
        "packages": sizes,
        "total_bytes": sum(sizes.values()),
        "estimated": ["torch"] if image == "cpu" else [],
    }


def main() -> int:
    """Print both images' package sizes (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    results = [measure("cpu"), measure("gpu")]
    if args.json:
        print(json.dumps(results, indent=2))  # noqa: T201
        return 0
    for result in results:
        packages: dict[str, int] = result["packages"]  # type: ignore[assignment]
        print(  # noqa: T201
            f"{result['image']}: {len(packages)} packages, {int(result['total_bytes']) / 2**30:.2f} GiB"
            + (" (torch estimated: CUDA wheel less its CUDA-only libraries)" if result["estimated"] else "")
        )
        for name, size in sorted(packages.items(), key=lambda item: -item[1])[:8]:
            print(f"  {name:28} {size / 2**20:8.0f} MiB")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
