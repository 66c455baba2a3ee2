#!/usr/bin/env python3
"""Write deploy/kuberay/*.yaml: the chart rendered with deploy/kuberay/chart-values.yaml.

The plain manifests are the chart's objects without Helm's bookkeeping: the chart label and
"managed-by: Helm" go, the RayJob gets a generateName (each `kubectl create` is a new run), and
a RayCronJob wraps the same RayJob spec on the chart's schedule, its entrypoint writing each
run under "<output.uri>/<UTC date>" (the Argo schedule's dated output, done in the shell).
Run after changing the chart or chart-values.yaml (tests/deploy fails while the files are stale):

    .venv/bin/python deploy/helm/sync-kuberay.py        (from anywhere in the repository)

Helm installs into a cluster, so this renders with the tests' harness: the real Helm library
(helm-sdkpy) installing into the fake Kubernetes API (deploy/helm/harness).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "deploy" / "helm" / "harness") not in sys.path:
    sys.path.insert(0, str(REPO / "deploy" / "helm" / "harness"))

from deploy_manifests import KUBERAY_DIR, HelmRunner, Release, standalone_helm, walk_dicts  # noqa: E402

VALUES_FILE = KUBERAY_DIR / "chart-values.yaml"
HEADER = """\
# Generated from deploy/helm/batch-inference with deploy/kuberay/chart-values.yaml; do not edit
# by hand: change the chart, then run .venv/bin/python deploy/helm/sync-kuberay.py (tests/deploy
# checks this file equals what the script writes).
"""
PLAIN_FILES = {
    "serviceaccount.yaml": "ServiceAccount",
    "configmap.yaml": "ConfigMap",
    "networkpolicy.yaml": "NetworkPolicy",
    "podmonitor.yaml": "PodMonitor",
    "rayjob.yaml": "RayJob",
}
FILES = (*PLAIN_FILES, "raycronjob.yaml")
# KubeRay 1.7 serves RayCronJob only behind an alpha feature gate that is off by default.
RAYCRONJOB_NOTE = """\
# Needs the KubeRay operator's alpha RayCronJob feature gate (off by default in 1.7): start the
# operator with --feature-gates=RayCronJob=true (kuberay-operator chart: featureGates, name
# RayCronJob, enabled true); without it the RayCronJob is stored but never runs.
"""
# Files that hold exactly one object; networkpolicy.yaml holds the chart's two NetworkPolicies.
SINGLE_OBJECT_FILES = ("serviceaccount.yaml", "configmap.yaml", "podmonitor.yaml", "rayjob.yaml")
DATED_OUTPUT = "$(date -u +%Y-%m-%d)"


def chart_values() -> dict[str, Any]:
    """deploy/kuberay/chart-values.yaml."""
    values: dict[str, Any] = yaml.safe_load(VALUES_FILE.read_text(encoding="utf-8"))
    return values


def _without_helm(obj: dict[str, Any]) -> dict[str, Any]:
    plain = copy.deepcopy(obj)
    for node in walk_dicts(plain):
        labels = node.get("labels")
        if isinstance(labels, dict) and "helm.sh/chart" in labels:
            del labels["helm.sh/chart"]
            labels["app.kubernetes.io/managed-by"] = "kubectl"
    return plain


def _chart_objects(release: Release, kind: str) -> list[dict[str, Any]]:
    """The chart's objects of one kind (for ConfigMaps only the pipeline config), without Helm."""
    objects = [release.pipeline_config()] if kind == "ConfigMap" else release.of_kind(kind)
    if not objects:
        raise ValueError(f"the chart rendered no {kind}")
    return [_without_helm(obj) for obj in objects]


def expected_manifests(release: Release) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects that file must hold, in order (one per YAML document)."""
    files = {name: _chart_objects(release, kind) for name, kind in PLAIN_FILES.items()}
    for single in SINGLE_OBJECT_FILES:
        if len(files[single]) != 1:
            raise ValueError(f"{single}: expected one object, the chart rendered {len(files[single])}")
    (rayjob,) = files["rayjob.yaml"]
    (configmap,) = files["configmap.yaml"]
    name = rayjob["metadata"].pop("name")
    rayjob["metadata"]["generateName"] = name.rsplit("-", 1)[0] + "-"
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    job_template = copy.deepcopy(rayjob["spec"])
    output = f"{config['output']['uri'].rstrip('/')}/{DATED_OUTPUT}"
    job_template["entrypoint"] = f"{job_template['entrypoint']} --set output.uri={output}"
    files["raycronjob.yaml"] = [
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCronJob",
            "metadata": {
                "name": rayjob["metadata"]["generateName"].rstrip("-"),
                "labels": rayjob["metadata"]["labels"],
            },
            "spec": {
                "schedule": chart_values()["schedule"]["cron"],
                "timeZone": "Etc/UTC",
                "jobTemplate": job_template,
            },
        }
    ]
    return files


class _BlockStyleDumper(yaml.SafeDumper):
    """Writes multi-line strings (config.yaml, runtimeEnvYAML) as readable ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _represent_str)


def render(helm: HelmRunner) -> dict[str, str]:
    """File name -> the text of that deploy/kuberay file, one YAML document per object."""
    files = expected_manifests(helm.install(chart_values()))
    return {
        name: HEADER
        + (RAYCRONJOB_NOTE if name == "raycronjob.yaml" else "")
        + yaml.dump_all(objects, Dumper=_BlockStyleDumper, sort_keys=False, width=200)
        for name, objects in files.items()
    }


def main() -> int:
    """Rewrite the manifests in deploy/kuberay; print which changed."""
    with standalone_helm() as helm:
        texts = render(helm)
    for name, text in texts.items():
        path = KUBERAY_DIR / name
        changed = not path.exists() or path.read_text(encoding="utf-8") != text
        path.write_text(text, encoding="utf-8")
        print(f"{path.relative_to(REPO)}: {'updated' if changed else 'unchanged'}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
