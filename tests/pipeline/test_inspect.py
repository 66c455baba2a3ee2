"""``pipeline inspect`` and ``pipeline compare`` on hand-made outputs and on a real committed run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipeline.cli import main
from pipeline.errors import AgreementTooLowError, OutputNotCommittedError, OutputNotFoundError, StorageError

NOT_COMMITTED_EXIT = 8
AGREEMENT_EXIT = 9


def _row(row_id, labels=None, status="ok", **extra):
    return {"row_id": row_id, "status": status, "top_k_labels": labels, **extra}


def _top(first, last="x4"):
    return [first, "x1", "x2", "x3", last]


# Base and new differ in known ways (see the expected numbers in TestCompare):
# r0-r5 ok in both, r3 and r5 change label; r6 fails in new only, r7 in base only;
# r8 only in base, r9 only in new; r10 fails in both.
BASE = [
    _row("r0", _top("cat")),
    _row("r1", _top("cat")),
    _row("r2", _top("dog")),
    _row("r3", _top("dog")),
    _row("r4", _top("bird")),
    _row("r5", _top("fish")),
    _row("r6", _top("dog")),
    _row("r7", status="failed", reason="timeout", error="read took over 300 s"),
    _row("r8", _top("cat")),
    _row("r10", status="failed"),
]
NEW = [
    _row("r0", _top("cat", "y")),
    _row("r1", _top("cat", "y")),
    _row("r2", _top("dog", "y")),
    _row("r3", _top("cat", "y")),
    _row("r4", _top("bird", "y")),
    _row("r5", _top("cat", "y")),
    _row("r6", status="failed"),
    _row("r7", _top("bird")),
    _row("r9", _top("dog")),
    _row("r10", status="failed"),
]


@pytest.fixture
def pair(tmp_path, write_output) -> tuple[Path, Path]:
    return write_output(tmp_path / "base", BASE), write_output(tmp_path / "new", NEW, parts=3)


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


class TestInspectHandMade:
    def test_counts_labels_histogram_lowest_and_failures(self, tmp_path, write_output, capsys):
        rows = [_row(f"r{i}", _top("cat" if i < 5 else "dog"), score=0.05 + 0.1 * i) for i in range(8)]
        rows += [_row("f1", status="failed", reason="not_found", error="no such file")]
        rows += [_row("f2", status="failed", reason="truncated", error="image file is truncated")]
        root = write_output(tmp_path / "out", rows)
        assert main(["inspect", str(root), "--json"]) == 0
        doc = _json(capsys)
        assert doc["counts"] == {"rows": 10, "ok": 8, "failed": 2}
        assert doc["failed_by_reason"] == {"not_found": 1, "truncated": 1}
        assert doc["consistent_with_manifest"] is True
        assert doc["model"]["name"] == "resnet18"
        assert doc["model"]["sha256"] == "ab" * 32
        assert doc["config_hash"] == "cd" * 32
        assert doc["throughput"]["images_per_second"] == 1.0
        assert doc["timeline_s"] == {"ray_ready": 1.0, "first_batch": 2.5, "written": 9.0}
        assert doc["labels"]["distinct"] == 2
        assert doc["labels"]["top"] == [{"label": "cat", "rows": 5}, {"label": "dog", "rows": 3}]
        bins = doc["confidence"]["bins"]
        assert len(bins) == 10
        assert [b["rows"] for b in bins] == [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
        assert (bins[0]["low"], bins[0]["high"]) == (0.0, 0.1)
        lowest = doc["lowest_confidence"]
        assert [row["row_id"] for row in lowest[:3]] == ["r0", "r1", "r2"]
        assert set(lowest[0]) == {"row_id", "uri", "label", "score", "top_labels", "top_scores"}
        assert lowest[0]["top_labels"] == ["cat", "x1", "x2"]  # the first 3, for the report's grid
        assert lowest[0]["top_scores"] == pytest.approx([0.9, 0.8, 0.7])
        failed = {row["row_id"]: row for row in doc["failed_sample"]}
        assert failed["f1"]["reason"] == "not_found"
        assert failed["f2"]["error"] == "image file is truncated"

    def test_text_output_names_each_section(self, tmp_path, write_output, capsys):
        root = write_output(tmp_path / "out", BASE)
        assert main(["inspect", str(root)]) == 0
        text = capsys.readouterr().out
        for heading in ("outcome", "throughput", "model", "top labels", "confidence", "lowest", "failed"):
            assert heading in text.lower(), heading
        assert "resnet18" in text
        assert "timeout" in text

    def test_an_embed_output_gives_dimension_norms_and_nan_inf(self, tmp_path, write_output, capsys):
        nan, inf = float("nan"), float("inf")
        rows = [
            _row("e0", embedding=[3.0, 4.0, 0.0]),  # norm 5
            _row("e1", embedding=[0.0, 0.0, 1.0]),  # norm 1
            _row("e2", embedding=[nan, 1.0, inf]),  # two bad values: its norm is left out
            _row("f1", status="failed", reason="truncated", error="image file is truncated"),
        ]
        root = write_output(tmp_path / "out", rows, embedding_dim=3)
        assert main(["inspect", str(root), "--json"]) == 0
        doc = _json(capsys)
        assert doc["task"] == "embed"
        assert doc["counts"] == {"rows": 4, "ok": 3, "failed": 1}
        embedding = doc["embedding"]
        assert embedding["dim"] == 3
        assert (embedding["rows_with_nan_or_inf"], embedding["nan_or_inf_values"]) == (1, 2)
        norms = embedding["norms"]
        assert (norms["norm_min"], norms["norm_max"], norms["norm_mean"]) == (1.0, 5.0, 3.0)
        assert [b["rows"] for b in norms["bins"]] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        assert (norms["bins"][0]["low"], norms["bins"][-1]["high"]) == (1.0, 5.0)
        assert doc["labels"] is None
        assert doc["confidence"] is None
        assert main(["inspect", str(root)]) == 0
        text = capsys.readouterr().out
        assert "dimension 3" in text
        assert "NaN/Inf   1 rows (2 values)" in text
        assert "top labels" not in text

    def test_an_uncommitted_output_is_refused_with_its_exit_code(self, tmp_path, write_output, capsys):
        root = write_output(tmp_path / "out", BASE, commit=False)
        assert main(["inspect", str(root)]) == NOT_COMMITTED_EXIT
        err = capsys.readouterr().err
        assert "_SUCCESS" in err
        assert "not committed" in err
        assert OutputNotCommittedError.exit_code == NOT_COMMITTED_EXIT

    def test_nothing_at_the_uri_is_not_found_not_a_storage_error(self, tmp_path, capsys):
        """A mistyped path exits 12 naming it, not 4 ("storage unreachable")."""
        assert main(["inspect", str(tmp_path / "nowhere")]) == OutputNotFoundError.exit_code == 12
        err = capsys.readouterr().err
        assert "no output at" in err
        assert "nowhere" in err
        assert "unreachable" not in err

    def test_a_part_cut_short_is_refused_as_unreadable(self, tmp_path, write_output, capsys):
        """A listed part truncated after the commit: exit 4 naming the part, not a DuckDB traceback."""
        root = write_output(tmp_path / "out", BASE)
        part = root / "data" / "part-001.parquet"
        part.write_bytes(part.read_bytes()[:100])
        assert main(["inspect", str(root)]) == StorageError.exit_code
        err = capsys.readouterr().err
        assert "part-001.parquet" in err
        assert "does not read as Parquet" in err

    def test_a_success_file_without_the_manifest_fields_is_not_a_commit(self, tmp_path, write_output, capsys):
        """A _SUCCESS of valid JSON, but no manifest: refused as not committed (exit 8), never 'run None'."""
        root = write_output(tmp_path / "out", BASE)
        (root / "_SUCCESS").write_text('{"status": "ok"}', encoding="utf-8")
        for command in (["inspect", str(root)], ["compare", str(root), str(root)]):
            assert main(command) == NOT_COMMITTED_EXIT
            captured = capsys.readouterr()
            assert "not a manifest of this pipeline (no run_id, counts, layout)" in captured.err
            assert "None" not in captured.out + captured.err


class TestNormHistogram:
    def test_unit_vectors_get_bins_whose_labels_differ(self, tmp_path, write_output, capsys):
        """Norms within 1e-4 of 1 (normalize: true): each bin has its own label, not 1.000-1.000 ten times."""
        import numpy as np

        rng = np.random.default_rng(3)
        rows = []
        for index in range(20):
            vector = rng.normal(size=4)
            vector *= (1 + (index - 10) * 1e-5) / np.linalg.norm(vector)
            rows.append({"row_id": f"r{index}", "status": "ok", "embedding": vector.tolist()})
        root = write_output(tmp_path / "unit", rows, embedding_dim=4)
        assert main(["inspect", str(root)]) == 0
        text = capsys.readouterr().out
        labels = [line.split()[0] for line in text.split("L2 norms")[1].splitlines()[1:11]]
        assert len(set(labels)) == 10, labels
        assert "1.000-1.000" not in text


class TestCompare:
    def test_known_differences(self, pair, capsys):
        base, new = pair
        assert main(["compare", str(base), str(new), "--json"]) == 0
        doc = _json(capsys)
        assert doc["rows"] == {
            "base": 10,
            "new": 10,
            "in_both": 9,
            "only_in_base": 1,
            "only_in_new": 1,
            "ok_in_both": 6,
            "failed_in_both": 1,
            "failed_only_in_base": 1,
            "failed_only_in_new": 1,
        }
        assert doc["top1_agreement"] == pytest.approx(4 / 6)
        assert doc["top1_agreeing_rows"] == 4
        # r0, r1, r2, r4 share 4 of 5 labels; r3, r5 share 3 of 5
        assert doc["top5_overlap"] == pytest.approx((4 * 0.8 + 2 * 0.6) / 6)
        assert doc["label_transitions"] == [
            {"base": "dog", "new": "cat", "rows": 1},
            {"base": "fish", "new": "cat", "rows": 1},
        ]
        gained = {item["label"]: item for item in doc["labels_gained"]}
        lost = {item["label"]: item for item in doc["labels_lost"]}
        assert gained["cat"] == {"label": "cat", "base": 3, "new": 4, "change": 1}
        assert set(gained) == {"cat", "bird"}
        assert set(lost) == {"dog", "fish"}
        examples = doc["examples"]
        assert [row["row_id"] for row in examples["only_in_base"]] == ["r8"]
        assert [row["row_id"] for row in examples["only_in_new"]] == ["r9"]
        assert [row["row_id"] for row in examples["failed_only_in_base"]] == ["r7"]
        assert examples["failed_only_in_base"][0]["reason"] == "timeout"
        assert [row["row_id"] for row in examples["failed_only_in_new"]] == ["r6"]

    def test_text_output(self, pair, capsys):
        assert main(["compare", *map(str, pair)]) == 0
        text = capsys.readouterr().out
        assert "agreement" in text.lower()
        assert "66.7%" in text
        assert "dog -> cat" in text

    @pytest.mark.parametrize(("minimum", "code"), [(0.6, 0), (0.66, 0), (0.67, AGREEMENT_EXIT), (1.0, 9)])
    def test_min_agreement_gates(self, pair, capsys, minimum, code):
        assert main(["compare", *map(str, pair), "--min-agreement", str(minimum)]) == code
        captured = capsys.readouterr()
        assert "agreement" in captured.out.lower()
        if code:
            assert "66.7%" in captured.err
            assert f"{minimum:.1%}" in captured.err
        assert AgreementTooLowError.exit_code == AGREEMENT_EXIT

    def test_min_agreement_outside_0_1_is_a_usage_error(self, pair, capsys):
        assert main(["compare", *map(str, pair), "--min-agreement", "1.5"]) == 2

    def test_the_overlap_is_named_for_the_labels_the_runs_kept(self, tmp_path, write_output, capsys):
        """Runs with top_k 3: the overlap is said as top-3 (was always "top-5"), over those 3 labels."""
        base = write_output(tmp_path / "b3", [_row("r0", ["cat", "dog", "cow"]), _row("r1", ["a", "b", "c"])])
        new = write_output(tmp_path / "n3", [_row("r0", ["cat", "cow", "emu"]), _row("r1", ["a", "b", "c"])])
        assert main(["compare", str(base), str(new)]) == 0
        text = capsys.readouterr().out
        assert "top-3 overlap 83.3%" in text  # (2/3 + 3/3) / 2
        assert "top-5" not in text
        assert main(["compare", str(base), str(new), "--json"]) == 0
        assert _json(capsys)["overlap_k"] == 3

    def test_an_uncommitted_side_is_refused(self, pair, tmp_path, write_output, capsys):
        loose = write_output(tmp_path / "loose", NEW, commit=False)
        assert main(["compare", str(pair[0]), str(loose)]) == NOT_COMMITTED_EXIT
        assert str(loose) in capsys.readouterr().err


@pytest.mark.slow
class TestRealRun:
    @pytest.fixture(scope="class")
    def output(self, reported_run) -> Path:
        """A real run of the sample images in 16-row parts (shared: conftest.py)."""
        root, _ = reported_run
        return root

    def test_inspect_matches_the_manifest_and_the_parts(self, output, capsys):
        assert main(["inspect", str(output), "--json"]) == 0
        doc = _json(capsys)
        manifest = json.loads((output / "_SUCCESS").read_text())
        table = pads.dataset(output / "data", format="parquet").to_table()
        ok = table.filter(pads.field("status") == "ok")
        assert doc["counts"] == {
            "rows": manifest["counts"]["inputs"],
            "ok": manifest["counts"]["succeeded"],
            "failed": manifest["counts"]["failed"],
        }
        assert doc["failed_by_reason"] == manifest["failed_by_reason"]
        assert doc["consistent_with_manifest"] is True
        assert doc["run_id"] == manifest["run_id"]
        assert doc["model"]["sha256"] == manifest["model"]["sha256"]
        assert doc["config_hash"] == manifest["config_hash"]
        assert doc["throughput"]["images_per_second"] == manifest["images_per_second"]
        assert doc["timeline_s"] == manifest["timings_s"]
        assert doc["parts"] == len(manifest["layout"]["files"])
        assert sum(b["rows"] for b in doc["confidence"]["bins"]) == ok.num_rows
        assert sum(item["rows"] for item in doc["labels"]["top"]) <= ok.num_rows
        lowest = min(ok.column("score").to_pylist())
        assert doc["lowest_confidence"][0]["score"] == pytest.approx(lowest)
        assert {row["uri"] for row in doc["failed_sample"]} == {
            row["uri"] for row in table.filter(pads.field("status") == "failed").to_pylist()
        }

    def test_compare_with_itself_agrees_fully(self, output, capsys):
        assert main(["compare", str(output), str(output), "--json", "--min-agreement", "1.0"]) == 0
        doc = _json(capsys)
        assert doc["top1_agreement"] == 1.0
        assert doc["top5_overlap"] == 1.0
        assert doc["rows"]["only_in_base"] == doc["rows"]["only_in_new"] == 0
        assert doc["label_transitions"] == []
        assert doc["labels_gained"] == doc["labels_lost"] == []
