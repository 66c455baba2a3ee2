"""The alert rules: valid, unit-tested by promtool (firing and quiet), documented with runbooks."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from monitoring_parts import ALERT_TESTS_DIR, ALERTS_DIR, REPO, RUNBOOKS_DIR, binary, load_yaml

RULE_FILES = sorted(ALERTS_DIR.glob("*.yaml"))
TEST_FILES = sorted(ALERT_TESTS_DIR.glob("*.test.yaml"))
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_SECTIONS = ("## What it means", "## How to check", "## How to fix")


def alerts() -> dict[str, dict[str, Any]]:
    """Every alerting rule of every rule file, by name."""
    found: dict[str, dict[str, Any]] = {}
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in found, f"duplicate alert {rule['alert']}"
                    found[rule["alert"]] = rule
    return found


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # fixed argument list
        [binary("promtool"), *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


class TestRuleFiles:
    def test_plain_rule_files_with_groups(self) -> None:
        """Each rule file is a plain Prometheus rule file (only ``groups:``), as the chart expects."""
        assert RULE_FILES
        for path in RULE_FILES:
            assert set(load_yaml(path)) == {"groups"}, path

    def test_promtool_check_rules(self) -> None:
        """``promtool check rules`` accepts every rule file."""
        result = promtool("check", "rules", *map(str, RULE_FILES))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_promtool_test_rules(self) -> None:
        """``promtool test rules`` passes every unit test file."""
        assert TEST_FILES
        result = promtool("test", "rules", *map(str, TEST_FILES))
        assert result.returncode == 0, result.stdout + result.stderr


class TestCoverage:
    def test_required_alerts_exist(self) -> None:
        """The alerts the issue asks for are all defined."""
        assert set(alerts()) >= {
            "PipelineJobFailed",
            "PipelineNoRecentSuccess",
            "PipelineFailureRateHigh",
            "PipelineThroughputLow",
            "PipelineStalled",
            "PipelineGpuUnderutilized",
            "PipelineObjectStoreSpilling",
        }

    def test_every_alert_has_a_firing_and_a_quiet_case(self) -> None:
        """Each alert appears in the promtool tests once with expected alerts and once with none."""
        firing: set[str] = set()
        quiet: set[str] = set()
        for path in TEST_FILES:
            spec = load_yaml(path)
            assert {(path.parent / f).resolve() for f in spec["rule_files"]} <= {
                p.resolve() for p in RULE_FILES
            }
            for test in spec["tests"]:
                for case in test.get("alert_rule_test", []):
                    (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
        names = set(alerts())
        assert names - firing == set(), "alerts without a firing test"
        assert names - quiet == set(), "alerts without a not-firing test"
        assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


class TestDocumentation:
    @pytest.mark.parametrize("name", sorted(alerts()))
    def test_labels_and_annotations(self, name: str) -> None:
        """Every alert has a severity, a summary, a description and a runbook_url."""
        rule = alerts()[name]
        assert rule["labels"]["severity"] in SEVERITIES
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])

    @pytest.mark.parametrize("name", sorted(alerts()))
    def test_runbook_exists_with_its_sections(self, name: str) -> None:
        """runbook_url points at docs/runbooks/<alert>.md, which says what it means, how to check and fix."""
        url = alerts()[name]["annotations"]["runbook_url"]
        assert url.endswith(f"/docs/runbooks/{name}.md"), url
        runbook = RUNBOOKS_DIR / f"{name}.md"
        assert runbook.is_file(), f"missing {runbook.relative_to(REPO)}"
        text = runbook.read_text(encoding="utf-8")
        assert text.startswith(f"# {name}\n"), runbook
        for section in RUNBOOK_SECTIONS:
            assert section in text, f"{runbook.name} lacks {section!r}"

    def test_no_runbook_without_an_alert(self) -> None:
        """Every runbook belongs to an alert that exists (a renamed alert takes its runbook along)."""
        assert {p.stem for p in RUNBOOKS_DIR.glob("*.md") if p.stem != "README"} == set(alerts())
