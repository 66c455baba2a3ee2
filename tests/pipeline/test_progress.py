"""The terminal display: start-up phases by name, then one bar of the rows left, one rate."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.ops import logs
from pipeline.ops.display import Display
from pipeline.ops.progress import SERIES_MAX_POINTS, ProgressSeries
from pipeline.outputs.layout import CHECKPOINT_DIR, DATA_DIR, MANIFEST
from pipeline.run.job import run_job

COLOUR = re.compile(r"\x1b\[[0-9;]*(?:3[0-8]|9[0-7])[0-9;]*m")


class Terminal(io.StringIO):
    """What a terminal would receive (rich sees a TTY)."""

    def isatty(self) -> bool:
        return True


def _text(terminal: Terminal) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())


class TestDisplay:
    def test_phases_then_the_rows_left_with_one_labelled_rate(self) -> None:
        terminal = Terminal()
        display = Display(terminal, enabled=True)
        display.phase("starting Ray")
        display.refresh()
        assert "starting Ray" in _text(terminal)
        display.rows(total=40)
        display.update(10)
        display.update(25)
        display.refresh()
        text = _text(terminal)
        assert "25/40" in text
        assert len(re.findall(r"img/s", text.splitlines()[-1] if text.splitlines() else "")) <= 1
        assert "img/s" in text
        display.close()

    def test_log_lines_are_printed_above_the_live_display(self) -> None:
        terminal = Terminal()
        display = Display(terminal, enabled=True)
        display.phase("loading model")
        assert logs.STDERR.above is not None  # while live, log lines go through the display
        logs.STDERR.write("a log line\n")
        display.close()
        assert logs.STDERR.above is None
        assert "a log line" in _text(terminal)

    def test_no_colour_with_no_color_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NO_COLOR", "1")
        terminal = Terminal()
        display = Display(terminal, enabled=True)
        display.rows(total=10)
        display.update(5)
        display.refresh()
        display.close()
        assert "5/10" in _text(terminal)
        assert not COLOUR.search(terminal.getvalue())

    def test_disabled_writes_nothing(self) -> None:
        terminal = Terminal()
        display = Display(terminal, enabled=False)
        display.phase("starting Ray")
        display.rows(total=3)
        display.update(3)
        display.close()
        assert terminal.getvalue() == ""
        assert logs.STDERR.above is None


@pytest.mark.slow
def test_a_resumed_run_counts_down_the_rows_left_not_all_inputs(ray_session, sample_images, make_config):
    """Phases are named; on a resume the bar's total is what is left to do."""
    config = make_config(sample_images, output__rows_per_file=8, logging__progress="on")
    first = Terminal()
    assert run_job(config, progress_stream=first).status == "succeeded"
    inputs = 43  # 40 images and 3 broken files
    text = _text(first)
    for phase in ("listing inputs", "loading model", "starting Ray", "starting workers", "committing"):
        assert phase in text, phase
    assert f"{inputs}/{inputs}" in text
    assert "0/?" not in text
    assert "?s" not in text

    # Undo the commit and take 10 rows out of the written part and its checkpoint, as if
    # they had never been written: the same command resumes with those 10 rows left.
    out = Path(config.output.uri)
    (out / MANIFEST).unlink()
    left = 10
    files = [*(out / CHECKPOINT_DIR).rglob("*.parquet"), *(out / DATA_DIR).glob("*.parquet")]
    dropped = pq.read_table(files[0]).column("row_id").to_pylist()[:left]
    for path in files:
        table = pq.read_table(path)
        keep = pc.invert(pc.is_in(table.column("row_id"), value_set=pa.array(dropped)))
        pq.write_table(table.filter(keep), path)
    second = Terminal()
    summary = run_job(config, progress_stream=second)
    assert summary.status == "succeeded"
    assert summary.processed_this_run == left
    text = _text(second)
    assert f"{left}/{left}" in text
    assert f"/{inputs}" not in text


class TestProgressSeries:
    def test_one_point_per_interval_and_always_the_last(self) -> None:
        series = ProgressSeries(started_wall=1000.0, every_s=5.0)
        for second in range(1, 13):  # polled every second, as watch_write does
            series.record(ok=10 * second, failed=second // 4, now=1000.0 + second)
        series.record(ok=125, failed=3, now=1012.5, last=True)
        assert series.as_dict() == {
            "every_s": 5.0,
            "columns": ["seconds", "ok", "failed"],
            "points": [[0.0, 0, 0], [5.0, 50, 1], [10.0, 100, 2], [12.5, 125, 3]],
        }

    def test_a_long_run_stays_small(self) -> None:
        series = ProgressSeries(started_wall=0.0, every_s=1.0)
        hours = 48
        for second in range(1, hours * 3600):
            series.record(ok=second, failed=0, now=float(second))
        series.record(ok=hours * 3600, failed=0, now=float(hours * 3600), last=True)
        points = series.as_dict()["points"]
        assert len(points) <= SERIES_MAX_POINTS
        assert points[0] == [0.0, 0, 0]
        assert points[-1] == [float(hours * 3600), hours * 3600, 0]
        seconds = [point[0] for point in points]
        assert seconds == sorted(seconds)
        assert series.every_s > 1.0  # the spacing grew as points were dropped
