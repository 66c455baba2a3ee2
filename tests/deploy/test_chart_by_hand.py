"""The run by hand that docs/deploy.md documents does what it says.

The command renders the RayJob alone (`helm template -s templates/rayjob.yaml`) with the
environment's values plus its `--set`s, and creates it next to the installed release. The test
renders the same, then loads the config that RayJob's driver would load: the installed
release's ConfigMap (rendered without the `--set`s) with the RayJob's runtime environment.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_manifests import REPO, HelmRunner, deep_merge, environment_values

from pipeline.config import load_config

DOCS = REPO / "docs" / "deploy.md"
SHELL_SUBSTITUTION = re.compile(r"\$\(date [^)]*\)")


def documented_command() -> list[str]:
    """The shell words of the helm command under "Run once by hand", dates filled in."""
    section = DOCS.read_text(encoding="utf-8").split("## Run once by hand")[1].split("\n## ")[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "docs/deploy.md has no command under Run once by hand"
    command = block.group(1).replace("\\\n", " ").split("|")[0]
    return shlex.split(SHELL_SUBSTITUTION.sub("20260101-0200", command))


def set_flags(words: list[str]) -> dict[str, Any]:
    """The command's --set flags as values (dotted keys nested, values typed as Helm types them)."""
    values: dict[str, Any] = {}
    for flag, argument in itertools.pairwise(words):
        if flag != "--set":
            continue
        key, _, text = argument.partition("=")
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(text)
    return values


@pytest.fixture(scope="module")
def by_hand(helm: HelmRunner) -> tuple[list[str], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(command words, its --set values, the RayJob it renders, the release ConfigMap it mounts)."""
    words = documented_command()
    assert words[:2] == ["helm", "template"]
    assert "-s" in words
    assert words[words.index("-s") + 1] == "templates/rayjob.yaml"
    env = Path(words[words.index("-f") + 1]).stem.removeprefix("values-")
    sets = set_flags(words)
    rendered = helm.install(deep_merge(environment_values(env), sets))
    installed = helm.install(environment_values(env))
    return words, sets, rendered.one("RayJob"), installed.pipeline_config()


class TestRunByHand:
    """The documented `helm template ... -s templates/rayjob.yaml | kubectl create` command."""

    def test_it_writes_where_its_set_says(self, by_hand, tmp_path: Path) -> None:
        """That RayJob's driver (release ConfigMap + its runtime env) writes to the --set output URI."""
        _, sets, rayjob, configmap = by_hand
        config_file = tmp_path / "config.yaml"
        config_file.write_text(configmap["data"]["config.yaml"], encoding="utf-8")
        runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
        config = load_config(config_file, environ=runtime_env["env_vars"])
        assert config.output.uri == sets["config"]["output"]["uri"]
        assert config.output.uri != yaml.safe_load(configmap["data"]["config.yaml"])["output"]["uri"]

    def test_it_mounts_the_installed_release_config(self, by_hand) -> None:
        """Every Ray pod of that RayJob mounts the ConfigMap the release installed (it exists)."""
        _, _, rayjob, configmap = by_hand
        cluster = rayjob["spec"]["rayClusterSpec"]
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
            assert volumes["pipeline-config"]["configMap"]["name"] == configmap["metadata"]["name"]

    def test_it_has_a_name_of_its_own(self, by_hand) -> None:
        """The RayJob is named by the command (two runs by hand do not collide), within KubeRay's 47."""
        _, sets, rayjob, _ = by_hand
        assert rayjob["metadata"]["name"] == sets["rayJob"]["name"]
        assert len(rayjob["metadata"]["name"]) <= 47
