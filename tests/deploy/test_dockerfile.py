"""docker/Dockerfile invariants, checked without building (no Docker engine here)."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest
import yaml
from deploy_manifests import CHART, REPO, Release
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

DOCKERFILE = REPO / "docker" / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|make|cmake|clang|git|curl|wget|python3?-dev)\b")


@dataclass
class Stage:
    """One build stage: its base, name and instructions (continuation lines joined)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        """Arguments of every instruction of a kind, in order."""
        return [arg for kind, arg in self.instructions if kind == instruction]


def parse_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of docker/Dockerfile."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, arg = line.partition(" ")
        kind = kind.upper()
        if kind == "FROM":
            parts = arg.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif kind == "ARG" and not stages:
            name, _, default = arg.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((kind, arg.strip()))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """The parsed Dockerfile."""
    return parse_dockerfile()


@pytest.fixture(scope="module")
def pins() -> dict[str, Requirement]:
    """pyproject.toml's dependencies by name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {Requirement(dep).name: Requirement(dep) for dep in project["dependencies"]}


def pinned_version(requirement: Requirement) -> str:
    """The version of an exact ``==`` pin."""
    (spec,) = requirement.specifier
    assert spec.operator == "==", requirement
    return spec.version


class TestDockerfile:
    """The image matches pyproject.toml and the chart."""

    def test_bases_are_pinned(self, dockerfile) -> None:
        """Every external base image has an exact tag or a digest, never latest or a bare name."""
        _, stages = dockerfile
        names = {stage.name for stage in stages}
        external = [s.base for s in stages if s.base.split(":")[0] not in names and "${" not in s.base]
        assert len(external) >= 3
        for base in external:
            assert "@sha256:" in base or re.search(r":[^:]*\d+\.\d+|:[a-z]+-\d{8}$", base), (
                f"{base} is not pinned"
            )
            assert not base.endswith(":latest")

    def test_multi_stage_final_is_the_flavour_base(self, dockerfile) -> None:
        """The final stage starts from the flavour's base (GPU: CUDA runtime; CPU: Ubuntu)."""
        global_args, stages = dockerfile
        final = stages[-1]
        assert final.base == "base-${FLAVOUR}"
        assert global_args["FLAVOUR"] == "gpu"
        bases = {s.name: s.base for s in stages}
        assert re.match(r"nvidia/cuda:[\d.]+-runtime-", bases["base-gpu"])
        assert {"base-gpu", "base-cpu", "builder", "final"} <= set(bases)

    def test_final_stage_runs_non_root_as_the_chart_user(self, dockerfile) -> None:
        """USER is a numeric non-root UID:GID, the one the chart's pods run as."""
        _, stages = dockerfile
        (user,) = stages[-1].args("USER")
        uid, gid = (int(part) for part in user.split(":"))
        values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["podSecurityContext"]
        assert uid > 0
        assert (uid, gid) == (values["runAsUser"], values["runAsGroup"])

    def test_final_stage_has_no_build_tools_or_caches(self, dockerfile) -> None:
        """The final stage installs nothing: no package manager, compiler, uv/pip or cache mount."""
        _, stages = dockerfile
        final = stages[-1]
        for command in final.args("RUN"):
            assert not re.search(r"\b(apt-get|apt|pip|uv|conda)\b", command), command
            assert not BUILD_TOOLS.search(command), command
            assert "--mount=type=cache" not in command
        copies = final.args("COPY")
        assert all(c.startswith("--from=builder ") for c in copies), copies
        builder = next(s for s in stages if s.name == "builder")
        assert any("UV_NO_CACHE=1" in env for env in builder.args("ENV"))

    def test_versions_match_pyproject_and_chart(self, dockerfile, pins) -> None:
        """Python, ray, torch and torchvision are the versions pyproject.toml pins and the chart declares."""
        global_args, _ = dockerfile
        project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        assert global_args["PYTHON_VERSION"] in SpecifierSet(project["requires-python"])
        assert global_args["RAY_VERSION"] == pinned_version(pins["ray"])
        assert global_args["TORCH_VERSION"] == pinned_version(pins["torch"])
        assert global_args["TORCHVISION_VERSION"] == pinned_version(pins["torchvision"])
        values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
        assert values["rayVersion"] == global_args["RAY_VERSION"]
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
        assert chart["appVersion"] == project["version"]

    def test_gpu_flavour_installs_the_gpu_extra(self, dockerfile) -> None:
        """The GPU image has the NVML bindings (the gpu extra) and checks they import at build time."""
        global_args, stages = dockerfile
        builder = next(s for s in stages if s.name == "builder")
        assert global_args["FLAVOUR"] == "gpu"
        assert "FLAVOUR" in builder.args("ARG")
        install = next(run for run in builder.args("RUN") if "/src${extra}" in run)
        assert 'if [ "${FLAVOUR}" = gpu ]; then extra="[gpu]"' in install
        assert 'python -c "import pynvml"' in install
        project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        assert any(pin.startswith("nvidia-ml-py==") for pin in project["optional-dependencies"]["gpu"])

    def test_entrypoint_is_the_chart_entrypoint(self, dockerfile, releases: dict[str, Release]) -> None:
        """ENTRYPOINT + CMD run exactly what the RayJob's entrypoint runs."""
        _, stages = dockerfile
        final = stages[-1]
        (entrypoint,) = final.args("ENTRYPOINT")
        (cmd,) = final.args("CMD")
        command = yaml.safe_load(entrypoint) + yaml.safe_load(cmd)
        assert command == shlex.split(releases["default"].one("RayJob")["spec"]["entrypoint"])

    def test_weights_can_be_baked_in(self, dockerfile) -> None:
        """MODEL_WEIGHTS copies a context file to /opt/models, where config model.weights points."""
        _, stages = dockerfile
        builder = next(s for s in stages if s.name == "builder")
        assert 'MODEL_WEIGHTS=""' in builder.args("ARG")
        assert any("/opt/models" in run and "MODEL_WEIGHTS" in run for run in builder.args("RUN"))
        config = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["config"]
        assert config["model"]["weights"].startswith("/opt/models/")

    def test_dockerignore_admits_only_the_build_inputs(self) -> None:
        """.dockerignore starts by excluding everything, then admits only what the build copies."""
        lines = [
            line
            for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")
        ]
        assert lines[0] == "*"
        admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
        assert admitted == {"pyproject.toml", "README.md", "pipeline", "models"}
