"""Every line on a run's standard error is one log line in the configured format.

Ray writes to the driver's stderr from places the pipeline does not control: its C++ core
(glog lines), its Python loggers (tab-separated text) and the lines it forwards from
workers (``(MapWorker pid=12) {...}``, coloured). The relay turns each into one structlog
event; what Ray prints on every healthy run is demoted to debug.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import samples
from pipeline.config import dump_yaml
from pipeline.ops import logrelay

CYAN, YELLOW, RESET = "\x1b[36m", "\x1b[33m", "\x1b[0m"
WORKER_DIED = "A worker died or was killed while executing a task by an unexpected system error."
WORKER_JSON = (
    '{"run_id": "r-1", "stage": "decode", "reason": "empty_file", "uri": "/d/empty.jpg", '
    '"event": "bad input", "level": "warning", "timestamp": "2026-12-01T06:48:28.024702Z"}'
)
CONSTRUCTOR_ARGS = (
    "[2026-12-01 06:48:23,284 E 3612 3849] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(Classify))' and ID: '342b' has constructor arguments in the object "
    "store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, "
    "the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details."
)


class TestParse:
    def test_a_coloured_worker_json_line_keeps_its_fields_and_names_the_worker(self) -> None:
        level, event, fields = logrelay.parse(
            f"{CYAN}(MapBatches(decode_batch) pid=3919){RESET} {WORKER_JSON}"
        )
        assert (level, event) == ("warning", "bad input")
        assert fields["reason"] == "empty_file"
        assert fields["worker"] == "MapBatches(decode_batch)"
        assert fields["pid"] == 3919
        assert fields["timestamp"] == "2026-12-01T06:48:28.024702Z"  # the worker's own time kept

    def test_a_deduplicated_worker_line_says_how_often_it_repeated(self) -> None:
        _, event, fields = logrelay.parse(
            f"(decode_batch pid=12, ip=10.0.0.7) {WORKER_JSON} [repeated 4x across cluster]"
        )
        assert event == "bad input"
        assert fields["repeated"] == 4
        assert fields["ip"] == "10.0.0.7"

    def test_a_worker_text_line_becomes_an_event_from_that_worker(self) -> None:
        level, event, fields = logrelay.parse("(Classify pid=77) UserWarning: something odd")
        assert (level, event) == ("warning", "UserWarning: something odd")
        assert fields["worker"] == "Classify"
        assert fields["source"] == "ray_worker"

    def test_a_glog_error_line_is_an_error_from_ray_core(self) -> None:
        level, event, fields = logrelay.parse(
            "[2026-12-01 06:48:23,284 E 3612 3849] gcs_client.cc:12: lost the GCS"
        )
        assert (level, event) == ("error", "lost the GCS")
        assert fields["source"] == "ray_core"
        assert fields["at"] == "gcs_client.cc:12"

    def test_the_constructor_arguments_line_every_ray_data_run_prints_is_demoted(self) -> None:
        level, event, fields = logrelay.parse(CONSTRUCTOR_ARGS)
        assert level == "debug"
        assert "constructor arguments" in event
        assert "ray-project/ray#57733" in fields["demoted"]

    def test_ray_python_log_lines_are_parsed_and_its_info_is_debug(self) -> None:
        level, event, fields = logrelay.parse(
            "2026-12-01 06:48:35,364\tINFO dataset.py:6884 -- Data sink Parquet finished. 303 rows"
        )
        assert (level, event) == ("debug", "Data sink Parquet finished. 303 rows")
        assert fields == {"source": "ray", "at": "dataset.py:6884"}
        level, event, _ = logrelay.parse(
            "2026-12-01 06:48:23,286\tWARNING __init__.py:28 -- Progress bars disabled. To enable, set x"
        )
        assert level == "debug"  # the job draws its own
        level, event, _ = logrelay.parse("2026-12-01 06:48:23,286\tERROR worker.py:1 -- a real problem")
        assert (level, event) == ("error", "a real problem")

    def test_plain_text_gets_a_level_from_its_words(self) -> None:
        assert logrelay.parse("error: the Ray Data job failed")[0] == "error"
        assert logrelay.parse("Traceback (most recent call last):")[0] == "error"
        assert logrelay.parse("warning: environment variable PIPELINE_X is not read")[0] == "warning"
        level, event, fields = logrelay.parse("something else")
        assert (level, event, fields) == ("info", "something else", {"source": "stderr"})

    def test_a_raylet_line_is_a_warning_from_the_raylet(self) -> None:
        level, event, fields = logrelay.parse(f"{YELLOW}(raylet){RESET} {WORKER_DIED}")
        assert (level, event) == ("warning", WORKER_DIED)
        assert fields == {"worker": "raylet", "source": "ray"}
        assert logrelay.is_ray_line(f"{YELLOW}(raylet){RESET} {WORKER_DIED}")
        assert logrelay.is_ray_line("(MapWorker(MapBatches(Classify)) pid=7) hello")
        assert not logrelay.is_ray_line("run 20261201T000000Z-abc: succeeded")

    def test_a_json_line_that_is_not_an_object_is_text(self) -> None:
        assert logrelay.parse("42") == ("info", "42", {"source": "stderr"})


def _stderr_lines(text: str) -> list[dict]:
    lines = text.splitlines()
    assert lines, "nothing on stderr"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a stderr line is not JSON: {line!r}")
        assert isinstance(parsed[-1], dict), line
    return parsed


def test_the_relay_turns_every_write_to_fd_2_into_one_json_line() -> None:
    """C++-style writes to the descriptor, Python prints and log calls all come out as JSON."""
    script = f"""
import os, sys
from pipeline.ops import logrelay, logs
logrelay.install()
logs.configure("json")
os.write(2, {CONSTRUCTOR_ARGS.encode()!r} + b"\\n")
os.write(2, b"[2026-12-01 06:48:23,284 W 1 2] raylet.cc:9: half a line")
os.write(2, b" then the rest\\n")
print("{CYAN}(decode pid=5){RESET} " + {WORKER_JSON!r}, file=sys.stderr)
print("error: something broke", file=sys.stderr)
logs.get_logger(stage="driver").info("rate", images_per_second=17.795587981868877)
logrelay.stop()
print("after stop goes straight out", file=sys.stderr)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stderr
    *relayed, last = done.stderr.splitlines()
    assert last == "after stop goes straight out"
    lines = _stderr_lines("\n".join(relayed))
    by_event = {line["event"]: line for line in lines}
    # The relayed lines in their order; the direct log line may come before them (another thread).
    assert [(line["level"], line["event"]) for line in lines if line["event"] != "rate"] == [
        ("warning", "half a line then the rest"),
        ("warning", "bad input"),
        ("error", "error: something broke"),
    ]  # the constructor-arguments line is debug: not shown at level info
    assert by_event["bad input"]["pid"] == 5
    assert by_event["rate"]["images_per_second"] == 17.7956  # six significant digits


def test_the_relay_keeps_rays_lines_off_stdout() -> None:
    """Ray's raylet and worker lines written to fd 1 are logged on stderr; the rest of stdout is untouched."""
    script = f"""
import os, sys
from pipeline.ops import logrelay, logs
logrelay.install()
logs.configure("json")
os.write(1, {f"{YELLOW}(raylet){RESET} {WORKER_DIED}".encode()!r} + b"\\n")
print("run r-1: succeeded")
print("{CYAN}(MapWorker(MapBatches(Classify)) pid=7){RESET} printed by a worker")
print()
print("  inputs     3", end="")
logrelay.stop()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "run r-1: succeeded\n\n  inputs     3"
    lines = _stderr_lines(done.stderr)
    assert [(line["level"], line["event"], line["worker"]) for line in lines] == [
        ("warning", WORKER_DIED, "raylet"),
        ("info", "printed by a worker", "MapWorker(MapBatches(Classify))"),
    ]


@pytest.mark.slow
def test_a_real_run_with_logs_in_a_file_writes_only_json_and_only_earned_warnings(
    make_config, tmp_path: Path
) -> None:
    """The acceptance run: every stderr line parses, workers' included; no unearned warning."""
    images = tmp_path / "images"
    samples.make_images(images, 40, seed=3, sizes=((160, 120),), png_every=0, broken=True)
    config = make_config(images, output__max_failure_fraction=0.5)
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(config), encoding="utf-8")
    log_file = tmp_path / "stderr.log"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with log_file.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=600,
            env=env,
            check=False,
        )
    text = log_file.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\x1b[" not in text
    lines = _stderr_lines(text)
    loud = [line for line in lines if line["level"] in {"warning", "error", "critical"}]
    assert {line["event"] for line in loud} == {"bad input"}, loud
    assert len(loud) == 3  # the three broken files, each said once
    assert all("worker" in line and "pid" in line for line in loud)  # forwarded from decode workers
    finished = next(line for line in lines if line["event"] == "run finished")
    for key in ("seconds", "images_per_second"):
        assert len(re.sub(r"\D", "", str(finished[key])).lstrip("0")) <= 6, finished[key]  # rounded
    assert all(line.get("run_id") == finished["run_id"] for line in lines if line["event"] != "run finished")
