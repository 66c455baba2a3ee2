"""Sizing the chart's worker groups for a target rate: ``pipeline plan --target-images-per-hour``.

On the chart (deploy/helm/batch-inference) decode runs on the CPU group and inference on the
GPU group, one actor per GPU. A job runs at ``min(gpus * f, cores * d)`` (docs/benchmarks.md,
"The ideal"), with ``f`` the model's img/s per GPU and ``d`` decode img/s per core; each side
is sized on its own for the target plus headroom, then rounded up to whole pods. The result
ends in the Helm values to set, keyed by their ``--set`` paths.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.config.worker_groups import carrying
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import Config

DEFAULT_HEADROOM = 0.25
# Pod shapes of deploy/helm/batch-inference/values.yaml (workerGroups.*.resources); the GPU
# pod's cores feed its GPUs (host-side conversion and copies), they do not decode.
CPU_POD_CPUS = 8
GPU_POD_GPUS = 1
GPU_POD_CPUS_PER_GPU = 4
CHART = "deploy/helm/batch-inference"


@dataclass(frozen=True)
class Rate:
    """A rate and where it came from: ``flag``, ``bench``, ``reference`` or ``none``."""

    images_per_second: float | None
    came_from: str
    source: str | None
    caveat: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the plan's JSON."""
        value = self.images_per_second
        return {
            "images_per_second": None if value is None else round(value, 2),
            "from": self.came_from,
            "source": self.source,
        }


# Measured rates, used where no flag or bench file gives one. Decode: column (b) of
# docs/benchmarks.md, the slowest core measured (404-492 img/s on 2-core AMD EPYCs).
DECODE_REFERENCE = Rate(
    404.0,
    "reference",
    "docs/benchmarks.md (b), the slowest core measured: AMD EPYC, JPEGs of 500x375 to 640x480; "
    "bigger photos decode slower: measure yours with `pipeline bench`",
)
# Model img/s per GPU by architecture, each naming its section of docs/benchmarks.md. Empty
# until a GPU figure is measured there (docs/benchmarks.md, "GPU: the GPU check"): a guessed
# rate would size clusters wrongly. Add e.g. "resnet50": Rate(..., "reference", "docs/...").
GPU_REFERENCES: dict[str, Rate] = {}


def check_positive(flag: str, value: float | None) -> None:
    """Exit 2 naming the flag unless ``value`` is None or a finite number above 0."""
    if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(flag, value, "must be a number above 0")


def check_headroom(value: float) -> None:
    """Exit 2 naming --headroom unless it is a fraction between 0 and 1."""
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ConfigError("--headroom", value, "must be a fraction between 0 and 1 (0.25 for 25%)")


def resolve_rates(
    config: Config, *, decode_rate: float | None, model_rate: float | None, bench_path: str | None
) -> tuple[Rate, Rate]:
    """The decode and model rates: a flag wins over the bench file, which wins over a reference."""
    bench: dict[str, Any] = {}
    bench_source, on_cpu = "", False
    if bench_path:
        try:
            bench = json.loads(Path(bench_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError("--from-bench", bench_path, f"not a readable JSON file: {exc}") from None
        if not isinstance(bench, dict):
            raise ConfigError("--from-bench", bench_path, "not a `pipeline bench --json` file")
        machine = bench.get("machine") or {}
        about = [bench.get("model"), bench.get("task"), bench.get("precision"), machine.get("device")]
        described = ", ".join(str(part) for part in about if part)
        bench_source = f"bench file {bench_path}" + (f" ({described})" if described else "")
        on_cpu = machine.get("device") == "cpu" and config.inference.device != "cpu"

    def pick(flag: str, given: float | None, key: str, reference: Rate | None) -> Rate:
        if given is not None:
            return Rate(given, "flag", flag)
        if key in bench:
            check_positive(f"--from-bench {key}", bench[key])
            caveat = None
            if on_cpu and key.startswith("a_"):
                caveat = f"the bench file's model rate was measured on a CPU machine, not a GPU: {bench_path}"
            return Rate(float(bench[key]), "bench", bench_source, caveat)
        return reference or Rate(None, "none", None)

    decode = pick("--decode-rate", decode_rate, "b_decode_images_per_second_per_core", DECODE_REFERENCE)
    model = pick(
        "--model-rate", model_rate, "a_model_only_images_per_second", GPU_REFERENCES.get(config.model.name)
    )
    return decode, model


def _notes(config: Config, decode: Rate, model: Rate, actors: int | None) -> list[str]:
    notes = [rate.caveat for rate in (decode, model) if rate.caveat]
    if model.images_per_second is None and config.inference.device != "cpu":
        notes.append(
            f"no measured GPU reference rate for {config.model.name} exists yet (docs/benchmarks.md has "
            "no GPU figures): the GPU group is not sized; run `pipeline bench` on a GPU node and pass "
            "--from-bench, or give --model-rate"
        )
    elif model.images_per_second is None:
        notes.append("no model rate: give --model-rate or --from-bench (see `pipeline bench`)")
    if actors and (config.resources.min_actors or 1) > actors:
        notes.append(f"lower config.resources.min_actors ({config.resources.min_actors}) to {actors} or less")
    return notes


@dataclass(frozen=True)
class PodShape:
    """What one pod of each worker group brings: cores of a CPU pod, GPUs of a GPU pod (as values.yaml).

    ``gpu_pod_cpus``: the GPU pod's cores, where declared; else ``GPU_POD_CPUS_PER_GPU`` per GPU.
    """

    cpus: int = CPU_POD_CPUS
    gpus: int = GPU_POD_GPUS
    gpu_pod_cpus: int | None = None


def pod_shape(config: Config, *, cpus: int | None, gpus: int | None) -> PodShape:
    """The pods to size: the flags where given, else the declared worker groups, else values.yaml's.

    With ``resources.placement: worker_groups`` the groups carrying the decode and the inference
    resources (the first of each, in declaration order) are the pods the cluster will start: sizing
    other pods would print Helm values for a cluster nobody declared.
    """
    resources = config.resources
    decode_group = inference_group = None
    if resources.placement == "worker_groups":
        decode_group = next(
            iter(carrying(resources.worker_groups, resources.cpu_group_resource).values()), None
        )
        gpu_groups = carrying(resources.worker_groups, resources.gpu_group_resource)
        inference_group = next((group for group in gpu_groups.values() if group.gpus), None)
    if cpus is None:
        cpus = int(decode_group.cpus) if decode_group is not None else CPU_POD_CPUS
    if gpus is not None or inference_group is None:
        return PodShape(cpus, gpus or GPU_POD_GPUS)
    return PodShape(cpus, inference_group.gpus, int(inference_group.cpus))


def size_cluster(
    config: Config,
    target_per_hour: float,
    headroom: float,
    decode: Rate,
    model: Rate,
    pods: PodShape = PodShape(),
) -> dict[str, Any]:
    """CPU and GPU pods for ``target_per_hour`` plus ``headroom``, and the Helm values to set.

    A side whose rate is unknown stays unsized (``None``), never guessed.
    """
    cpus_per_pod, gpus_per_pod = pods.cpus, pods.gpus
    sized_for = target_per_hour * (1 + headroom)
    per_second = sized_for / 3600
    d, f = decode.images_per_second, model.images_per_second
    cores = math.ceil(per_second / d) if d else None
    cpu_pods = math.ceil(cores / cpus_per_pod) if cores else None
    gpus = math.ceil(per_second / f) if f else None
    gpu_pods = math.ceil(gpus / gpus_per_pod) if gpus else None
    actors = gpu_pods * gpus_per_pod if gpu_pods else None  # an actor on every GPU the pods bring
    expected = None
    if d and f and cpu_pods and actors:
        expected = min(actors * f, cpu_pods * cpus_per_pod * d)
    gpu_pod_cpus = str(pods.gpu_pod_cpus or GPU_POD_CPUS_PER_GPU * gpus_per_pod)
    helm = {
        "workerGroups.cpu.maxReplicas": cpu_pods,
        "workerGroups.cpu.resources.requests.cpu": str(cpus_per_pod),
        "workerGroups.cpu.resources.limits.cpu": str(cpus_per_pod),
        "workerGroups.gpu.maxReplicas": gpu_pods,
        "workerGroups.gpu.resources.requests.cpu": gpu_pod_cpus,
        "workerGroups.gpu.resources.limits.cpu": gpu_pod_cpus,
        "workerGroups.gpu.resources.requests.nvidia\\.com/gpu": gpus_per_pod,
        "workerGroups.gpu.resources.limits.nvidia\\.com/gpu": gpus_per_pod,
        "config.resources.max_actors": actors,
    }
    return {
        "target_images_per_hour": round(target_per_hour),
        "headroom": headroom,
        "sized_for_images_per_hour": round(sized_for),
        "sized_for_images_per_second": round(per_second, 1),
        "rates": {"decode_per_core": decode.as_dict(), "model_per_gpu": model.as_dict()},
        "cpu_group": {"cores_needed": cores, "pods": cpu_pods, "cpus_per_pod": cpus_per_pod},
        "gpu_group": {
            "gpus_needed": gpus,
            "pods": gpu_pods,
            "gpus_per_pod": gpus_per_pod,
            "cpus_per_pod": int(gpu_pod_cpus),
        },
        "expected_images_per_second": None if expected is None else round(expected, 1),
        "expected_images_per_hour": None if expected is None else round(expected * 3600),
        "gpu_hours_per_million_images": (
            None if expected is None or not actors else round(actors * 1_000_000 / expected / 3600, 3)
        ),
        "notes": _notes(config, decode, model, actors),
        "helm_values": helm,
    }


def _split(path: str) -> list[str]:
    r"""A --set path's keys: dots separate them, ``\.`` is a dot inside a key."""
    return [key.replace("\x00", ".") for key in path.replace("\\.", "\x00").split(".")]


def values_snippet(helm: dict[str, Any]) -> str:
    """The known Helm values as a values.yaml snippet."""
    tree: dict[str, Any] = {}
    for path, value in helm.items():
        if value is not None:
            *parents, leaf = _split(path)
            node = tree
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
    return yaml.safe_dump(tree, sort_keys=False)


def _number(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _count(number: int, unit: str) -> str:
    return f"{number} {unit}" + ("" if number == 1 else "s")


def render(sized: dict[str, Any]) -> list[str]:
    """The human view of the sizing; it ends with the Helm values to paste."""
    rates, cpu, gpu = sized["rates"], sized["cpu_group"], sized["gpu_group"]
    headline = (
        f"sized for {sized['target_images_per_hour']:,} img/h with {sized['headroom']:.0%} headroom "
        f"({sized['sized_for_images_per_hour']:,} img/h)"
    )

    def rate(name: str) -> str:
        found = rates[name]
        if found["images_per_second"] is None:
            return "no rate"
        return f"{_number(found['images_per_second'])} img/s ({found['source']})"

    cpu_shape = _count(cpu["cpus_per_pod"], "core")
    lines = [
        f"# sizing: {headline}, {_number(sized['sized_for_images_per_second'])} img/s",
        f"#   decode per core: {rate('decode_per_core')}",
        f"#     -> {_count(cpu['cores_needed'], 'core')}: {_count(cpu['pods'], 'CPU pod')} of {cpu_shape}",
        f"#   model per GPU: {rate('model_per_gpu')}",
    ]
    if gpu["pods"] is not None:
        shape = f"{_count(gpu['gpus_per_pod'], 'GPU')} and {_count(gpu['cpus_per_pod'], 'core')}"
        pods = _count(gpu["pods"], "GPU pod")
        lines.append(f"#     -> {_count(gpu['gpus_needed'], 'GPU')}: {pods} of {shape}")
    if sized["expected_images_per_second"] is not None:
        lines.append(
            f"#   expected: {_number(sized['expected_images_per_second'])} img/s "
            f"({sized['expected_images_per_hour']:,} img/h), "
            f"{sized['gpu_hours_per_million_images']} GPU-hours per million images"
        )
    lines += [f"#   note: {note}" for note in sized["notes"]]
    helm = sized["helm_values"]
    unsized = [path for path, value in helm.items() if value is None]
    lines.append(f"# Helm values, {headline}: in a values file")
    lines.append(values_snippet(helm).rstrip())
    if unsized:
        lines.append(f"# not sized (no rate): {', '.join(unsized)}")
    lines.append("# or as flags, after your -f values-<env>.yaml (docs/deploy.md):")
    flags = [f"--set {shlex.quote(f'{path}={value}')}" for path, value in helm.items() if value is not None]
    lines.append(f"helm upgrade --install batch-inference {CHART} -f {CHART}/values-ENV.yaml \\")
    lines += [f"  {flag} \\" for flag in flags[:-1]] + [f"  {flags[-1]}"]
    return lines
