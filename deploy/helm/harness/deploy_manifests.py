"""Render the chart with the real Helm library and check what it renders.

``HelmRunner`` installs the chart into the fake API server (deploy_fake_api.py) through
helm-sdkpy in a subprocess (deploy_helm_cli.py). The validators check built-in kinds with
kubernetes-validate and custom resources with their CRDs' OpenAPI schemas (crds/).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import yaml
from deploy_fake_api import BUILTIN_RESOURCES, EXISTING_OBJECTS, FakeKubeAPI, crd_resources

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TESTS = REPO / "tests" / "deploy"  # the CRDs the objects are validated against, the stored renders
CHART = REPO / "deploy" / "helm" / "batch-inference"
KUBERAY_DIR = REPO / "deploy" / "kuberay"
CRD_DIR = TESTS / "crds"
# The stored renders test_chart_renders.py compares with; deploy/helm/render-snapshots.py writes them.
RENDERS_DIR = TESTS / "renders"
HELM_CLI = HERE / "deploy_helm_cli.py"
ENVIRONMENTS = ("dev", "staging", "prod")
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion): its schemas are the strictest test.
KUBERNETES_VERSION = "1.28"
RELEASE = "batch-inference"
NAMESPACE = "batch"

Obj = dict[str, Any]


class HelmRefused(Exception):  # noqa: N818 - it is what Helm did
    """Helm refused to install the chart (schema, template or API error); the message is Helm's."""


@dataclass
class Release:
    """One installed release: Helm's result, the objects in its manifest, and what the API got."""

    result: Obj
    objects: list[Obj]
    posted: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        """Objects of one kind, in manifest order."""
        return [obj for obj in self.objects if obj["kind"] == kind]

    def pipeline_config(self) -> Obj:
        """The ConfigMap holding the pipeline's config.yaml (others hold dashboards)."""
        (configmap,) = [cm for cm in self.of_kind("ConfigMap") if "config.yaml" in cm.get("data", {})]
        return configmap

    def one(self, kind: str) -> Obj:
        """The single object of a kind."""
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Obj:
    """``override`` over ``base``, recursively for maps (as Helm merges -f files)."""
    merged = dict(copy.deepcopy(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def environment_values(env: str, chart: Path = CHART) -> Obj:
    """The contents of values-<env>.yaml."""
    data = yaml.safe_load((chart / f"values-{env}.yaml").read_text(encoding="utf-8"))
    return data or {}


def load_script(name: str) -> ModuleType:
    """A script of deploy/helm (e.g. "sync-kuberay.py") as a module: its name has dashes."""
    path = REPO / "deploy" / "helm" / name
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_values() -> dict[str, Obj]:
    """Name -> values of the chart's usual renders: its defaults, then each environment's file."""
    return {"default": {}, **{env: environment_values(env) for env in ENVIRONMENTS}}


class HelmRunner:
    """Installs charts into a FakeKubeAPI with helm-sdkpy and returns the rendered objects."""

    def __init__(self, api: FakeKubeAPI, workdir: Path) -> None:
        self.api = api
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig.yaml"
        self.kubeconfig.write_text(api.kubeconfig(NAMESPACE), encoding="utf-8")
        self._count = 0

    def _run(self, *args: str) -> Obj:
        env = {**os.environ, "HELM_DRIVER": "memory"}
        proc = subprocess.run(
            [sys.executable, str(HELM_CLI), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=120,
        )
        try:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise AssertionError(
                f"helm cli failed: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            ) from exc
        if proc.returncode != 0:
            raise HelmRefused(out.get("error", proc.stdout))
        return out

    def install(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        chart: Path = CHART,
        release: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> Release:
        """``helm install RELEASE CHART -n NAMESPACE`` with ``values`` merged over the chart's defaults."""
        self._count += 1
        values_file = self.workdir / f"values-{self._count}.json"
        values_file.write_text(json.dumps(dict(values or {})), encoding="utf-8")
        self.api.take_created()
        result = self._run("install", str(self.kubeconfig), str(chart), release, namespace, str(values_file))
        objects = [doc for doc in yaml.safe_load_all(result["manifest"]) if doc]
        return Release(result=result, objects=objects, posted=self.api.take_created())

    def lint(self, chart: Path = CHART) -> Obj:
        """``helm lint CHART``."""
        return self._run("lint", str(self.kubeconfig), str(chart))


def start_fake_api() -> FakeKubeAPI:
    """A fake Kubernetes API serving the built-in kinds and the CRDs under crds/."""
    return FakeKubeAPI(
        resources={**BUILTIN_RESOURCES, **crd_resources(CRD_DIR)}, existing=dict(EXISTING_OBJECTS)
    ).start()


@contextmanager
def standalone_helm() -> Iterator[HelmRunner]:
    """A HelmRunner on a fake API of its own, for scripts run outside pytest (deploy/helm/*.py)."""
    api = start_fake_api()
    try:
        with tempfile.TemporaryDirectory(prefix="batch-inference-helm-") as workdir:
            yield HelmRunner(api, Path(workdir))
    finally:
        api.stop()


# -- schemas --------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Close every object schema that lists its properties, as strict field validation does."""
    if isinstance(schema, dict):
        closed = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in closed
            and "additionalProperties" not in closed
            and not closed.get("x-kubernetes-preserve-unknown-fields")
        ):
            closed["additionalProperties"] = False
        if closed.get("nullable"):
            closed = {"anyOf": [{"type": "null"}, {k: v for k, v in closed.items() if k != "nullable"}]}
        return closed
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> strict OpenAPI schema of every CRD under crds/."""
    schemas = {}
    for path in sorted(CRD_DIR.rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                for version in spec["versions"]:
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def _check_metadata(obj: Obj) -> None:
    """Name and labels as the API server would check them (CRD schemas leave metadata open)."""
    name = obj["metadata"]["name"]
    assert DNS_SUBDOMAIN.match(name), f"{obj['kind']} name {name!r} is not a DNS subdomain"
    for labelled in walk_dicts(obj):
        labels = labelled.get("labels") if isinstance(labelled.get("labels"), dict) else None
        if (labels is not None and "name" in labelled) or (
            labels is not None and labelled is obj.get("metadata")
        ):
            for key, value in labels.items():
                assert LABEL_KEY.match(key), f"{obj['kind']}/{name}: bad label key {key!r}"
                assert isinstance(value, str), f"{obj['kind']}/{name}: label {key} is not a string"
                assert LABEL_VALUE.match(value), f"{obj['kind']}/{name}: bad label value {key}={value!r}"


@cache
def _kubernetes_validator(api_version: str, kind: str) -> jsonschema.Validator:
    """kubernetes-validate's strict schema for a kind, loaded once (its validate() reloads it)."""
    from kubernetes_validate.utils import SchemaNotFoundError, schema_contents
    from referencing import Registry, Resource

    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    directory = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
    try:
        schema = schema_contents(f"{directory}/{kind.lower()}-{group_version}.json", KUBERNETES_VERSION)
    except FileNotFoundError as exc:
        raise SchemaNotFoundError(kind=kind, version=KUBERNETES_VERSION, api_version=api_version) from exc
    definitions = schema_contents(f"{directory}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_builtin(obj: Obj) -> None:
    """Validate a built-in kind as kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True) does."""
    _kubernetes_validator(obj["apiVersion"], obj["kind"]).validate(obj)


def validate(obj: Obj) -> None:
    """Validate one object: its CRD schema, or Kubernetes' own schema for built-in kinds."""
    key = (obj["apiVersion"], obj["kind"])
    schema = crd_schemas().get(key)
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(obj)
    else:
        validate_builtin(obj)
    _check_metadata(obj)
    for template in pod_templates(obj):
        # Pod templates inside custom resources: check them against Kubernetes' PodTemplate too.
        validate_builtin(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        )


# -- walking objects ------------------------------------------------------------------------------


def walk_dicts(node: Any) -> Iterator[Obj]:
    """Every mapping in a parsed manifest, depth first, the node itself included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk_dicts(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_dicts(item)


def pod_specs(obj: Obj) -> list[Obj]:
    """Every pod spec in an object, wherever it sits (anything with a ``containers`` list)."""
    return [node for node in walk_dicts(obj) if isinstance(node.get("containers"), list)]


def pod_templates(obj: Obj) -> list[Obj]:
    """Every pod template (``{metadata, spec: {containers}}``) inside a custom resource."""
    if not obj["apiVersion"].endswith(("ray.io/v1", "argoproj.io/v1alpha1")):
        return []
    return [
        node
        for node in walk_dicts(obj)
        if isinstance(node.get("spec"), dict) and "containers" in node["spec"]
    ]


SCHEDULED_RUN = {
    "{{workflow.name}}": "batch-inference-1767225600",
    "{{workflow.creationTimestamp.Y}}": "2026",
    "{{workflow.creationTimestamp.m}}": "01",
    "{{workflow.creationTimestamp.d}}": "01",
    # schedule.incremental.previousSuffix's default: the day before, as Argo evaluates it.
    "{{=sprig.date('2006-01-02',sprig.dateModify('-24h',"
    "sprig.toDate('2006-01-02T15:04:05Z07:00',workflow.creationTimestamp)))}}": "2025-12-31",
}


def scheduled_rayjob(cron_workflow: Obj) -> Obj:
    """The RayJob a CronWorkflow's run creates, with Argo's placeholders filled in as for one run."""
    (template,) = [t for t in cron_workflow["spec"]["workflowSpec"]["templates"] if "resource" in t]
    manifest = template["resource"]["manifest"]
    for placeholder, value in SCHEDULED_RUN.items():
        manifest = manifest.replace(placeholder, value)
    assert "{{" not in manifest, f"unfilled Argo placeholder in {manifest}"
    rayjob: Obj = yaml.safe_load(manifest)
    metadata = rayjob["metadata"]
    if "generateName" in metadata:  # the API server's suffix, as it would pick one
        metadata["name"] = metadata.pop("generateName") + "x7k2q"
    return rayjob


def rayjob_spec_of(obj: Obj) -> Obj:
    """The RayJob spec inside a RayJob, a RayCronJob or a CronWorkflow."""
    if obj["kind"] == "RayJob":
        return obj["spec"]
    if obj["kind"] == "RayCronJob":
        return obj["spec"]["jobTemplate"]
    if obj["kind"] == "CronWorkflow":
        return scheduled_rayjob(obj)["spec"]
    raise AssertionError(f"no RayJob spec in a {obj['kind']}")


def env_of(container: Obj) -> dict[str, Obj]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in container.get("env", [])}
