"""Every exit code of README's table is one a real `pipeline` command ends with; the table is errors.py's.

One case per code, each the cheapest real way to reach it: hand-made outputs, a real lease,
a FIFO manifest that keeps the run in its listing until the signal comes. Commands that reach
Ray, or a signal, run as processes; the rest in this process, through the CLI's own ``main``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import pipeline
from pipeline import errors
from pipeline.cli import build_parser, main
from pipeline.compute.model import read_weights
from pipeline.config import Config, dump_yaml
from pipeline.errors import EXIT_CODES, PipelineError
from pipeline.outputs.layout import MANIFEST, RUN_STATE, OutputLocation
from pipeline.outputs.lease import Lease
from pipeline.review import inspection

ROOT = Path(pipeline.__file__).parents[1]
README = ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- exit codes: generated", "<!-- end of exit codes -->"


@dataclass
class Case:
    """What one case needs: a folder of its own, the shared images, and a config builder."""

    tmp_path: Path
    images: Path
    config: Callable[..., Config]
    write_output: Callable[..., Path]
    monkeypatch: pytest.MonkeyPatch

    def config_file(self, config: Config) -> Path:
        path = self.tmp_path / "job.yaml"
        path.write_text(dump_yaml(config), encoding="utf-8")
        return path

    def committed(self, config: Config, config_hash: str) -> None:
        """A committed output (hand-made rows) whose manifest records ``config_hash``."""
        out = Path(config.output.uri)
        self.write_output(out, [{"row_id": "a", "status": "ok", "top_k_labels": ["cat"]}])
        manifest = json.loads((out / MANIFEST).read_text())
        (out / MANIFEST).write_text(json.dumps({**manifest, "config_hash": config_hash}))


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process(argv: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline ...`` as a process of its own, to the end."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=timeout_s,
        check=False,
    )


def succeeds_on_a_committed_rerun(case: Case) -> int:
    config = case.config(case.images, case.tmp_path / "out")
    case.committed(config, config.config_hash(read_weights(config.model).sha256))
    return main(["run", "--config", str(case.config_file(config))])


def refuses_a_bad_key(case: Case) -> int:
    return main(["run", "--set", f"input.uri={case.images}", "--set", "model.random_init=maybe"])


def refuses_another_configs_commit(case: Case) -> int:
    config = case.config(case.images, case.tmp_path / "out")
    case.committed(config, "cd" * 32)
    return main(["run", "--config", str(case.config_file(config))])


def cannot_reach_storage(case: Case) -> int:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = [f"storage.endpoint_url={dead}", "storage.max_attempts=1", "storage.connect_timeout_s=1"]
    return main(["inspect", "s3://bucket/out", *(item for s in settings for item in ("--set", s))])


def exceeds_the_failure_budget(case: Case) -> int:
    """Five inputs, none an image, and no failure budget set: the default refuses to commit them."""
    bad = case.tmp_path / "bad"
    bad.mkdir()
    for index in range(5):
        (bad / f"{index}.jpg").write_text("not an image")
    config = case.config(bad, case.tmp_path / "out", output__max_failure_fraction=None)
    return main(["run", "--config", str(case.config_file(config))])


def cannot_reach_the_cluster(case: Case) -> int:
    config = case.config(
        case.images,
        case.tmp_path / "out",
        resources__ray_address=f"127.0.0.1:{free_port()}",
        resources__connect_timeout_s=1,
    )
    return process(["run", "--config", str(case.config_file(config))]).returncode


def waits_in_vain_for_gpu_workers(case: Case) -> int:
    """Declared groups whose GPU group never gets a node on this session's cluster (no autoscaler)."""
    groups = (
        "{cpu: {cpus: 2, max_replicas: 1, resources: {cpu_group: 1000}},"
        " gpu: {cpus: 1, gpus: 1, max_replicas: 1, resources: {gpu_group: 1000}}}"
    )
    config = case.config(
        case.images,
        case.tmp_path / "out",
        resources__placement="worker_groups",
        resources__worker_groups=groups,
        resources__gpu_workers_timeout_s=1,
        inference__device="cpu",  # placement still asks one GPU per actor: the wait is what is tested
        resources__actor_num_gpus=1,
    )
    return main(["run", "--config", str(case.config_file(config))])


def finds_the_output_in_use(case: Case) -> int:
    config = case.config(case.images, case.tmp_path / "out")
    with Lease.acquire(OutputLocation.open(config.output.uri, config.storage), 120):
        return main(["run", "--config", str(case.config_file(config))])


def refuses_to_read_an_uncommitted_output(case: Case) -> int:
    out = case.write_output(case.tmp_path / "out", [{"row_id": "a", "status": "failed"}], commit=False)
    return main(["inspect", str(out)])


def finds_agreement_too_low(case: Case) -> int:
    rows = [{"row_id": "a", "status": "ok", "top_k_labels": ["cat"]}]
    base = case.write_output(case.tmp_path / "base", rows)
    new = case.write_output(case.tmp_path / "new", [{**rows[0], "top_k_labels": ["dog"]}])
    return main(["compare", str(base), str(new), "--min-agreement", "0.5"])


def refuses_to_resume_another_config(case: Case) -> int:
    config = case.config(case.images, case.tmp_path / "out")
    out = Path(config.output.uri)
    out.mkdir()
    (out / RUN_STATE).write_text(json.dumps({"run_id": "r1", "config_hash": "cd" * 32}))
    return main(["run", "--config", str(case.config_file(config))])


def finds_nothing_at_a_mistyped_path(case: Case) -> int:
    return main(["inspect", str(case.tmp_path / "no-such-output")])


def hits_an_unforeseen_error(case: Case) -> int:
    """A bug stands in as an exception no code path expects, raised where inspect reads the parts."""
    out = case.write_output(case.tmp_path / "out", [{"row_id": "a", "status": "ok", "top_k_labels": ["cat"]}])

    def bug(*_: object) -> None:
        raise ZeroDivisionError("a bug")

    case.monkeypatch.setattr(inspection, "inspect_committed", bug)
    case.monkeypatch.setattr(tempfile, "tempdir", str(case.tmp_path))  # its traceback file goes there
    return main(["inspect", str(out)])


def interrupted_in_its_listing(signum: int) -> Callable[[Case], int]:
    """The run reads a manifest that is a FIFO: it waits there, handlers set, until the signal comes."""

    def run(case: Case) -> int:
        fifo = case.tmp_path / "manifest.csv"
        os.mkfifo(fifo)
        config = case.config(fifo, case.tmp_path / "out")
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        command = [sys.executable, "-m", "pipeline", "run", "--config", str(case.config_file(config))]
        with subprocess.Popen(
            command, env={**env, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True
        ) as job:
            writer = _wait_for_reader(fifo, job)
            job.send_signal(signum)
            _, stderr = job.communicate(timeout=120)
            os.close(writer)
        assert "Traceback" not in stderr, stderr[-3000:]
        return job.returncode

    return run


def _wait_for_reader(fifo: Path, job: subprocess.Popen[str], timeout_s: float = 120) -> int:
    """Open the FIFO's write end once the job has it open for reading (ENXIO until then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and job.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        time.sleep(0.1)
    raise AssertionError(f"the job never opened {fifo} (exit {job.poll()})")


#: The cheapest real way to each code.
CASES: dict[int, Callable[[Case], int]] = {
    0: succeeds_on_a_committed_rerun,
    2: refuses_a_bad_key,
    3: refuses_another_configs_commit,
    4: cannot_reach_storage,
    5: exceeds_the_failure_budget,
    6: cannot_reach_the_cluster,
    7: finds_the_output_in_use,
    8: refuses_to_read_an_uncommitted_output,
    9: finds_agreement_too_low,
    10: waits_in_vain_for_gpu_workers,
    11: refuses_to_resume_another_config,
    12: finds_nothing_at_a_mistyped_path,
    13: hits_an_unforeseen_error,
    130: interrupted_in_its_listing(signal.SIGINT),
    143: interrupted_in_its_listing(signal.SIGTERM),
}


@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """`pipeline run` in this process sets SIGINT and SIGTERM handlers: put pytest's back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("code", sorted(EXIT_CODES))
def test_the_command_ends_with_each_code(
    code, tmp_path, sample_images, local_config, write_output, monkeypatch, keep_signal_handlers, request
):
    """Each code of the table is what a real command exits with in the case it names."""
    if code in {5, 10}:  # the cases that reach Ray in this process: this session's cluster
        request.getfixturevalue("ray_session")
    case = Case(tmp_path, sample_images, local_config, write_output, monkeypatch)
    assert CASES[code](case) == code


def test_every_code_has_a_case():
    """No code in the table without a case above, and no case for a code the table lacks."""
    assert set(CASES) == set(EXIT_CODES)


def test_every_error_class_exits_with_a_code_of_the_table():
    """Each error's exit code is in the table; each code but success and signals has an error."""

    def subclasses(cls: type) -> set[type]:
        return {cls, *(sub for child in cls.__subclasses__() for sub in subclasses(child))}

    raised = {cls.exit_code for cls in subclasses(PipelineError)}
    assert raised <= set(EXIT_CODES)
    assert set(EXIT_CODES) - raised == {0, 130, 143}
    assert {128 + signal.SIGINT, 128 + signal.SIGTERM} == {130, 143}


def test_readme_table_is_generated_from_errors_py():
    """README's exit-code table is exactly errors.exit_code_table() (scripts/sync-exit-codes.py writes it)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(TABLE_START)
    block = text[text.index("\n", start) + 1 : text.index(TABLE_END)]
    assert block == errors.exit_code_table()


def test_help_lists_every_code():
    """`pipeline --help` ends with every code and its meaning, from the same table."""
    epilog = build_parser().epilog or ""
    for code in EXIT_CODES:
        assert f"\n  {code:>3}  " in epilog


def test_an_unforeseen_error_is_one_line_naming_the_file_with_its_traceback(
    tmp_path, write_output, monkeypatch, capsys
):
    """No traceback on the terminal: `error: unexpected error <type>: <message> (... traceback in <file>)`."""
    case = Case(tmp_path, tmp_path, lambda *_: None, write_output, monkeypatch)  # type: ignore[arg-type]
    assert hits_an_unforeseen_error(case) == errors.UNEXPECTED_EXIT_CODE
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: unexpected error ZeroDivisionError: a bug (a bug in the pipeline")
    saved = Path(line.rsplit("traceback in ", 1)[1].rstrip(")"))
    text = saved.read_text()
    assert "Traceback (most recent call last)" in text
    assert 'raise ZeroDivisionError("a bug")' in text
    saved.unlink()


def test_an_unforeseen_error_inside_a_run_is_its_own_code_in_the_summary_and_log(
    tmp_path, sample_images, local_config, monkeypatch, capfd, keep_signal_handlers
):
    """A bug past the lease: exit 13 (not 6), the summary records it, the JSON line carries the traceback."""

    def bug(*_: object) -> None:
        raise ZeroDivisionError("a bug in the run")

    from pipeline.run import job

    monkeypatch.setattr(job, "resolve_spec", bug)
    config = local_config(sample_images, tmp_path / "out", logging__format="json")
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(config), encoding="utf-8")
    local_summary = tmp_path / "summary.json"  # --summary-json: written when the run fails too
    assert (
        main(["run", "--config", str(path), "--summary-json", str(local_summary)])
        == errors.UNEXPECTED_EXIT_CODE
    )
    last = json.loads(capfd.readouterr().err.strip().splitlines()[-1])
    assert last["exit_code"] == errors.UNEXPECTED_EXIT_CODE
    assert last["event"].startswith("unexpected error ZeroDivisionError: a bug in the run")
    assert "Traceback (most recent call last)" in last["traceback"]
    assert Path(last["traceback_file"]).read_text() == last["traceback"]
    [summary] = (tmp_path / "out").glob("_summary-*.json")
    assert json.loads(summary.read_text())["error"] == "ZeroDivisionError: a bug in the run"
    assert json.loads(local_summary.read_text()) == json.loads(summary.read_text())
    Path(last["traceback_file"]).unlink()
