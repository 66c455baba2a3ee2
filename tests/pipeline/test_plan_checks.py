"""`pipeline plan` makes the checks `pipeline run` makes, and leads with what the run will do.

Every refusal is tried on both commands: they must end with the same exit code, so a plan that
passes means the run passes the same checks. Nothing here writes to the output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.cli import main
from pipeline.config import dump_yaml
from pipeline.outputs.layout import MANIFEST, RUN_STATE


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*")}


def _argv(command: str, config_path: Path, *extra: str) -> list[str]:
    return [command, "--config", str(config_path), *extra]


@pytest.fixture
def job(tmp_path, sample_images, local_config):
    """Write a config (``job(**overrides)``) and return its path; the output is ``tmp_path / "out"``."""

    def write(**overrides: object) -> Path:
        config = local_config(sample_images, tmp_path / "out", **overrides)
        path = tmp_path / "job.yaml"
        path.write_text(dump_yaml(config), encoding="utf-8")
        return path

    return write


def _committed(out: Path, write_output, config_hash: str) -> None:
    write_output(out, [{"row_id": "a", "status": "ok", "top_k_labels": ["cat"]}])
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "config_hash": config_hash}))


def _mistyped_model(tmp_path, job, write_output):
    return job(model__name="resnet181")


def _weights_of_another_architecture(tmp_path, job, write_output):
    path = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    return job(model__weights=str(path))


def _committed_by_another_config(tmp_path, job, write_output):
    _committed(tmp_path / "out", write_output, "cd" * 32)
    return job()


def _unfinished_run_of_another_config(tmp_path, job, write_output):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / RUN_STATE).write_text(json.dumps({"run_id": "r1", "config_hash": "cd" * 32}))
    return job()


def _output_inside_the_input(tmp_path, job, write_output):
    from pipeline.config import load_config

    config = load_config(job(), environ={})
    return job(output__uri=str(Path(config.input.uri) / "predictions"))


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (_mistyped_model, 2),
        (_weights_of_another_architecture, 2),
        (_committed_by_another_config, 3),
        (_unfinished_run_of_another_config, 11),
        (_output_inside_the_input, 2),
    ],
)
def test_plan_refuses_what_run_refuses_with_the_same_code(case, code, tmp_path, job, write_output, capfd):
    """Mistyped model, weights that do not fit, another config's commit or unfinished run, a nested
    output: `plan` exits as `run` does, with the same message, before any work."""
    path = case(tmp_path, job, write_output)
    out = tmp_path / "out"
    before = _snapshot(out) if out.exists() else None
    assert main(_argv("plan", path)) == code
    planned = _error(capfd.readouterr().err)
    assert (_snapshot(out) if out.exists() else None) == before  # the plan wrote nothing
    assert main(_argv("run", path)) == code
    assert _error(capfd.readouterr().err) == planned


def _error(err: str) -> str:
    """The command's last line, the message alone (JSON or text)."""
    last = err.strip().splitlines()[-1]
    return str(json.loads(last)["event"]) if last.startswith("{") else last.removeprefix("error: ")


@pytest.mark.slow
class TestWhatTheRunWillDo:
    def test_a_new_run_leads_the_plan_and_the_config_waits_for_its_flag(self, ray_session, job, capsys):
        """The first lines say what the run will do and that the checks passed; the config only on request."""
        path = job()
        assert main(_argv("plan", path)) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "what the run will do"
        assert lines[1].startswith("  a new run: classify 43 inputs (files) from ")
        assert any(line.startswith("  checks") and line.endswith("passed") for line in lines[:6])
        assert "# resolved config" not in lines
        assert main(_argv("plan", path, "--show-config")) == 0
        shown = capsys.readouterr().out.splitlines()
        assert shown[0] == "what the run will do"
        assert "# resolved config" in shown

    def test_a_committed_output_plans_nothing_and_is_left_alone(
        self, ray_session, tmp_path, job, write_output, capsys
    ):
        """Committed with this config: the plan says the run will do nothing (exit 0), writing nothing."""
        from pipeline.compute.model import read_weights
        from pipeline.config import load_config

        path = job()
        config = load_config(path, environ={})
        _committed(tmp_path / "out", write_output, config.config_hash(read_weights(config.model).sha256))
        before = _snapshot(tmp_path / "out")
        assert main(_argv("plan", path)) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "what the run will do"
        assert lines[1].startswith("  nothing: ")
        assert "already holds run '20261201T000000Z-000000'" in lines[1]
        assert main(_argv("plan", path, "--json")) == 0
        assert json.loads(capsys.readouterr().out)["will_do"]["action"] == "nothing"
        assert _snapshot(tmp_path / "out") == before
