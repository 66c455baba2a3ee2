"""docker/Dockerfile's invariants, checked without building (no Docker engine here); what images carry."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib import metadata

import pytest
import yaml
from deploy_manifests import CHART, REPO, Release
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

DOCKERFILE = REPO / "docker" / "Dockerfile"
FINAL_TARGETS = ("cpu", "gpu")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# Runtime dependencies the package uses without importing them: fsspec loads s3fs by name for s3:// URIs.
LOADED_BY_NAME = {"s3fs"}
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


def stage(stages: list[Stage], name: str) -> Stage:
    """The stage of that name."""
    (found,) = [s for s in stages if s.name == name]
    return found


def lineage(stages: list[Stage], name: str) -> list[str]:
    """A stage's bases, nearest first, down to the external image."""
    names = {s.name: s for s in stages}
    chain = []
    while name in names:
        name = names[name].base
        chain.append(name)
    return chain


def pinned_version(requirement: Requirement) -> str:
    """The version of an exact ``==`` pin."""
    (spec,) = requirement.specifier
    assert spec.operator == "==", requirement
    return spec.version


class TestDockerfile:
    """Two images from one Dockerfile, on one pinned slim base, matching pyproject.toml and the chart."""

    def test_bases_are_pinned_by_digest(self, dockerfile) -> None:
        """Every external base image is pinned by sha256 digest (a tag can be moved), beside its tag."""
        _, stages = dockerfile
        names = {stage.name for stage in stages}
        external = [s.base for s in stages if s.base not in names]
        assert len(external) >= 2
        for base in external:
            assert DIGEST.search(base), f"{base} is not pinned by digest"
            assert re.search(r":[^:@]*\d[^:@]*@", base), f"{base} names no version tag beside its digest"

    def test_two_targets_on_one_slim_base(self, dockerfile) -> None:
        """Targets cpu and gpu run on one Ubuntu base; no CUDA base image duplicates torch's CUDA."""
        _, stages = dockerfile
        for target in FINAL_TARGETS:
            chain = lineage(stages, target)
            assert chain[:2] == ["runtime", "base"], chain
            assert chain[-1].startswith("ubuntu:"), chain
        assert stages[-1].name == "cpu", "a plain docker build (no --target) makes the cpu image"
        assert not any("nvidia/cuda" in s.base for s in stages)

    def test_each_target_installs_its_torch(self, dockerfile) -> None:
        """cpu: torch's CPU index, no gpu extra, CUDA-less; gpu: PyPI's CUDA wheels and the gpu extra.

        Both carry the models and tables extras, and import each library of theirs once built.
        """
        _, stages = dockerfile
        (cpu_install,) = stage(stages, "builder-cpu").args("RUN")
        (gpu_install,) = stage(stages, "builder-gpu").args("RUN")
        assert "--index-url https://download.pytorch.org/whl/cpu" in cpu_install
        assert '"/src[models,tables]"' in cpu_install
        assert "torch.version.cuda is None" in cpu_install
        assert "--index-url https://pypi.org/simple" in gpu_install
        assert '"/src[gpu,models,tables]"' in gpu_install
        assert "import pipeline, pynvml" in gpu_install
        for install in (cpu_install, gpu_install):
            assert "timm, transformers, open_clip" in install
        project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        assert any(pin.startswith("nvidia-ml-py==") for pin in project["optional-dependencies"]["gpu"])
        for target in FINAL_TARGETS:
            sources = {copy.split()[0] for copy in stage(stages, target).args("COPY")}
            assert sources == {f"--from=builder-{target}"}, (target, sources)

    def test_final_stages_run_non_root_as_the_chart_user(self, dockerfile) -> None:
        """USER is a numeric non-root UID:GID, the one the chart's pods run as."""
        _, stages = dockerfile
        (user,) = stage(stages, "runtime").args("USER")
        uid, gid = (int(part) for part in user.split(":"))
        values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["podSecurityContext"]
        assert uid > 0
        assert (uid, gid) == (values["runAsUser"], values["runAsGroup"])
        for target in FINAL_TARGETS:
            assert not stage(stages, target).args("USER"), f"{target} must not switch user back"

    def test_final_stages_have_no_build_tools_or_caches(self, dockerfile) -> None:
        """runtime, cpu and gpu install nothing: no package manager, compiler, uv/pip or cache mount."""
        _, stages = dockerfile
        for name in ("runtime", *FINAL_TARGETS):
            for command in stage(stages, name).args("RUN"):
                assert not re.search(r"\b(apt-get|apt|pip|uv|conda)\b", command), command
                assert not BUILD_TOOLS.search(command), command
                assert "--mount=type=cache" not in command
        assert any("UV_NO_CACHE=1" in env for env in stage(stages, "builder").args("ENV"))

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

    def test_entrypoint_is_the_chart_entrypoint(self, dockerfile, releases: dict[str, Release]) -> None:
        """ENTRYPOINT + CMD run exactly what the RayJob's entrypoint runs."""
        _, stages = dockerfile
        runtime = stage(stages, "runtime")
        (entrypoint,) = runtime.args("ENTRYPOINT")
        (cmd,) = runtime.args("CMD")
        command = yaml.safe_load(entrypoint) + yaml.safe_load(cmd)
        assert command == shlex.split(releases["default"].one("RayJob")["spec"]["entrypoint"])

    def test_the_head_prestop_runs_in_the_cpu_image(self, dockerfile, releases: dict[str, Release]) -> None:
        """The head's preStop command is the CPU image's venv Python, which has Ray's Jobs API client."""
        _, stages = dockerfile
        head = releases["default"].one("RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
        assert head["spec"]["containers"][0]["image"].endswith("-cpu")
        command = head["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "python"
        assert any(env.startswith("PATH=/opt/venv/bin:") for env in stage(stages, "runtime").args("ENV"))
        assert any('"ray[data,default]==' in run for run in stage(stages, "builder-cpu").args("RUN"))

    def test_weights_can_be_baked_in(self, dockerfile) -> None:
        """MODEL_WEIGHTS copies a context file to /opt/models in both images (config model.weights)."""
        _, stages = dockerfile
        builder = stage(stages, "builder")
        assert 'MODEL_WEIGHTS=""' in builder.args("ARG")
        assert any("/opt/models" in run and "MODEL_WEIGHTS" in run for run in builder.args("RUN"))
        for target in FINAL_TARGETS:
            assert any("/opt/models" in copy for copy in stage(stages, target).args("COPY"))
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


def imported_distributions() -> set[str]:
    """Canonical names of the distributions whose modules pipeline/ imports."""
    modules: set[str] = set()
    for path in (REPO / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    owners = metadata.packages_distributions()
    return {canonicalize_name(dist) for module in modules for dist in owners.get(module, [])}


class TestWhatTheImagesCarry:
    """Every runtime dependency is used by the package; the CPU image carries no CUDA."""

    def test_every_runtime_dependency_is_used(self, pins) -> None:
        """Each [project] dependency is imported by pipeline/ (or loaded by name, like s3fs)."""
        used = imported_distributions()
        assert {"ray", "torch", "pyarrow"} <= used  # the scan finds imports
        unused = sorted(name for name in map(canonicalize_name, pins) if name not in used | LOADED_BY_NAME)
        assert unused == [], "runtime dependencies pipeline/ never imports (move them to the extra that does)"

    def test_cpu_image_carries_no_cuda_packages(self) -> None:
        """scripts/image-sizes.py: the cpu set has no nvidia-*/triton or NVML; the gpu set has them."""
        spec = importlib.util.spec_from_file_location("image_sizes", REPO / "scripts" / "image-sizes.py")
        assert spec is not None
        assert spec.loader is not None
        sizes = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sizes)
        cpu, gpu = set(sizes.closure("cpu")), set(sizes.closure("gpu"))
        assert not [name for name in cpu if sizes.CUDA_PACKAGES.match(name)]
        assert "nvidia-ml-py" not in cpu
        assert {"nvidia-ml-py", "torch", "ray"} <= gpu
        assert any(sizes.CUDA_PACKAGES.match(name) for name in gpu)
        assert cpu < gpu
        assert "kubernetes" not in gpu
