"""``pipeline report`` and ``output.report``: the page of a real run opened in headless Chromium,
an uncommitted output refused, inputs deleted after the run, an ``embed`` output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main, samples
from pipeline.config import StorageConfig
from pipeline.errors import OutputNotCommittedError
from pipeline.outputs.layout import MANIFEST, REPORT, OutputLocation
from pipeline.review.inspection import inspect_output
from pipeline.review.report import write_after_commit
from scripts.report_browser import browser_missing, visit

INPUTS, FAILED = 43, 3  # conftest's sample_images: 40 images and 3 broken files
PNG = b"\x89PNG\r\n\x1a\n"


def _picture_tiles(html: str) -> int:
    return html.count('src="data:image/jpeg;base64,')


@pytest.fixture(scope="module")
def reported(reported_run) -> Path:
    """A real local run with ``output.report: true``: its output folder (shared: conftest.py)."""
    root, summary = reported_run
    assert (summary.status, summary.inputs, summary.failed) == ("succeeded", INPUTS, FAILED)
    return root


@pytest.mark.slow
class TestJobWritesTheReport:
    def test_report_html_beside_the_manifest(self, reported):
        page = (reported / REPORT).read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>")
        assert "Run report" in page
        assert _picture_tiles(page) == 10  # the 10 lowest-confidence rows, read from the inputs
        assert "not_an_image" in page or "empty_file" in page  # the broken files, by name and reason

    def test_the_manifest_holds_a_small_progress_series(self, reported):
        progress = json.loads((reported / MANIFEST).read_text(encoding="utf-8"))["progress"]
        assert progress["columns"] == ["seconds", "ok", "failed"]
        points = progress["points"]
        assert points[0] == [0.0, 0, 0]
        assert points[-1][1:] == [INPUTS - FAILED, FAILED]  # the last point is the attempt's totals
        assert [p[0] for p in points] == sorted(p[0] for p in points)

    def test_a_report_that_cannot_be_written_is_a_warning_not_a_failure(self, tmp_path, write_output):
        root = write_output(tmp_path / "out", [{"row_id": "r0", "status": "ok", "top_k_labels": ["cat"]}])
        (root / MANIFEST).unlink()  # what the report reads is gone: rendering fails
        warnings: list[tuple[str, dict]] = []

        class Log:
            def warning(self, event: str, **fields: object) -> None:
                warnings.append((event, fields))

            def info(self, event: str, **fields: object) -> None:
                raise AssertionError(event)

        location = OutputLocation.open(str(root), StorageConfig())
        assert write_after_commit(location, StorageConfig(), Log()) is False
        assert not (root / REPORT).exists()
        ((event, fields),) = warnings
        assert "report not written" in event
        assert "OutputNotCommittedError" in str(fields["error"])


@pytest.fixture(scope="module")
def browser() -> None:
    reason = browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the browser test")
        pytest.skip(reason)


@pytest.mark.slow
class TestInTheBrowser:
    @pytest.fixture(scope="class")
    def seen(self, browser, reported, tmp_path_factory):
        shot = tmp_path_factory.mktemp("shot") / "report.png"
        return visit(reported / REPORT, shot), shot

    def test_loads_without_console_errors(self, seen):
        page, _ = seen
        assert page.errors == []

    def test_no_request_leaves_the_page(self, seen, reported):
        page, _ = seen
        outside = [url for url in page.requests if not url.startswith("data:")]
        assert outside == [(reported / REPORT).resolve().as_uri()]  # the page itself, nothing else

    def test_each_section_and_its_numbers(self, seen, reported):
        page, _ = seen
        summary = page.sections["summary"]
        for number in (f"{INPUTS}\nrows", f"{INPUTS - FAILED}\nok", f"{FAILED}\nfailed"):
            assert number in summary
        assert "weights sha256" in summary
        assert "config hash" in summary
        assert "ray_ready" in summary  # the start-up timeline
        plots = page.sections["plots"]
        for title in ("Throughput over time", "Failures by reason", "Label distribution", "Confidence"):
            assert title in plots
        assert "no series" not in plots
        lowest = page.sections["lowest"]
        shown = inspect_output(str(reported), StorageConfig())["lowest_confidence"]
        assert len(shown) == 10
        for row in shown:  # each tile: the input's name, then its first three labels with their scores
            labels = "\n".join(
                f"{label} {score:.4f}"
                for label, score in zip(row["top_labels"], row["top_scores"], strict=True)
            )
            assert f"{row['uri'].removeprefix('file://')}\n{labels}" in lowest
        failed = page.sections["failed-rows"]
        assert "broken/empty.jpg" in failed
        assert "empty_file" in failed

    def test_every_picture_and_plot_is_drawn(self, seen):
        page, _ = seen
        assert page.broken_images == []
        assert page.images >= 4 + 10  # four plots and the lowest-confidence thumbnails

    def test_screenshot(self, seen):
        _, shot = seen
        assert shot.read_bytes().startswith(PNG)


class TestReportCommand:
    def test_an_uncommitted_output_is_refused_with_inspects_exit_code(self, tmp_path, write_output, capsys):
        root = write_output(tmp_path / "out", [{"row_id": "r0", "status": "ok"}], commit=False)
        page = tmp_path / "report.html"
        assert main(["report", str(root), "--html", str(page)]) == OutputNotCommittedError.exit_code
        assert "not committed" in capsys.readouterr().err
        assert not page.exists()

    def test_inputs_deleted_after_the_run_still_report_names_and_reasons(self, tmp_path, write_output):
        images = tmp_path / "images"
        samples.make_images(images, 4, seed=3)
        files = sorted(path for path in images.rglob("*") if path.is_file() and "broken" not in path.parts)
        rows = [
            {"row_id": f"r{i}", "uri": path.as_uri(), "status": "ok", "top_k_labels": [f"l{i}", "x", "y"]}
            for i, path in enumerate(files)
        ]
        rows.append(
            {
                "row_id": "bad",
                "uri": (images / "broken" / "empty.jpg").as_uri(),
                "status": "failed",
                "reason": "truncated",
                "error": "image file is truncated",
            }
        )
        root = write_output(tmp_path / "out", rows)
        before = tmp_path / "before.html"
        assert main(["report", str(root), "--html", str(before)]) == 0
        assert _picture_tiles(before.read_text(encoding="utf-8")) == len(files)

        shutil.rmtree(images)
        after = tmp_path / "after.html"
        assert main(["report", str(root), "--html", str(after)]) == 0
        page = after.read_text(encoding="utf-8")
        assert _picture_tiles(page) == 0
        assert page.count("not found: deleted or moved since the run") == len(files) + 1
        for path in files:
            assert path.as_uri() in page  # each by name
        assert "image file is truncated" in page  # the failed row's reason and error

    def test_an_output_from_before_the_series_says_no_series(self, tmp_path, write_output):
        rows = [{"row_id": "r0", "status": "ok", "score": 0.5}]  # no labels kept: an ok row all the same
        rows.append({"row_id": "r1", "status": "ok", "top_k_labels": ["cat", "dog", "emu"]})
        root = write_output(tmp_path / "out", rows)  # its _SUCCESS has no "progress", like older outputs
        page = tmp_path / "report.html"
        assert main(["report", str(root), "--html", str(page)]) == 0
        html = page.read_text(encoding="utf-8")
        assert "no series" in html
        assert "Failures by reason" in html
        assert "no failed rows" in html

    def test_an_embed_output_shows_dimension_norms_and_nan_inf_and_no_label_plots(
        self, tmp_path, write_output
    ):
        rows = [{"row_id": f"e{i}", "status": "ok", "embedding": [float(i), 0.0, 1.0, 0.0]} for i in range(5)]
        rows.append({"row_id": "nan", "status": "ok", "embedding": [float("nan"), 0.0, 0.0, 0.0]})
        rows.append({"row_id": "f", "status": "failed", "reason": "not_found", "error": "no such file"})
        root = write_output(tmp_path / "out", rows, embedding_dim=4)
        page = tmp_path / "report.html"
        assert main(["report", str(root), "--html", str(page)]) == 0
        html = page.read_text(encoding="utf-8")
        assert 'id="embedding"' in html
        assert '<td id="dim">4</td>' in html
        assert '<td id="nonfinite">1 (1 values)</td>' in html
        assert "Embedding norms" in html
        assert "Label distribution" not in html
        assert "Lowest confidence" not in html
