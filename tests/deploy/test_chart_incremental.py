"""Incremental nights: each scheduled RayJob builds on the previous night's output, or runs in full.

The Argo expression of the previous night's suffix is filled in as the harness does for one
run (2026-01-01, so 2025-12-31); the environment the RayJob gets is then read by the pipeline's
own loader.
"""

from __future__ import annotations

import pytest
import yaml
from deploy_manifests import Release, scheduled_rayjob

from pipeline.config import load_config


def _env_vars(release: Release) -> dict[str, str]:
    """The scheduled RayJob's runtime environment variables, for one night."""
    rayjob = scheduled_rayjob(release.one("CronWorkflow"))
    return dict(yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"])


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_each_night_points_at_the_night_before(releases: dict[str, Release], environment: str) -> None:
    """Night N builds on night N-1's output: a full run when it is absent, all recomputed on a new model."""
    release = releases[environment]
    prefix = yaml.safe_load(release.pipeline_config()["data"]["config.yaml"])["output"]["uri"].rstrip("/")
    env = _env_vars(release)
    assert env["PIPELINE_OUTPUT__URI"] == f"{prefix}/2026-01-01"
    assert env["PIPELINE_OUTPUT__PREVIOUS"] == f"{prefix}/2025-12-31"
    assert env["PIPELINE_OUTPUT__PREVIOUS_MISSING"] == "full_run"
    assert env["PIPELINE_OUTPUT__PREVIOUS_OTHER_CONFIG"] == "recompute"
    overrides = {key: value for key, value in env.items() if key.startswith("PIPELINE_OUTPUT__")}
    config = load_config(None, ["model.random_init=true", "input.uri=s3://bucket/images/"], environ=overrides)
    assert config.output.previous == f"{prefix}/2025-12-31"
    assert config.output.previous_missing == "full_run"


def test_schedule_is_full_unless_asked(scheduled: Release) -> None:
    """With schedule.incremental off (the default) a night computes every input: no output.previous."""
    env = _env_vars(scheduled)
    assert not [key for key in env if key.startswith("PIPELINE_OUTPUT__PREVIOUS")]
