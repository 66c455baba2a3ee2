"""`pipeline compare` on embedding outputs: per-row cosine, nearest-neighbour agreement, and refusals.

Outputs are written by hand (tests/conftest.py ``write_committed``) with vectors chosen so the
expected numbers are known; the neighbour agreement is checked against numpy by brute force.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import AgreementTooLowError

DIM = 8
ROWS = 12


def _vectors(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(ROWS, DIM)).astype(np.float32)


def _rows(vectors: np.ndarray, *, failed: tuple[int, ...] = (), skip: tuple[int, ...] = ()) -> list[dict]:
    rows = []
    for index, vector in enumerate(vectors):
        if index in skip:
            continue
        if index in failed:
            rows.append({"row_id": f"r{index:02d}", "status": "failed"})
        else:
            rows.append({"row_id": f"r{index:02d}", "status": "ok", "embedding": vector.tolist()})
    return rows


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _nearest(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


@pytest.fixture
def pair(tmp_path, write_output):
    """Base and new embed outputs: 12 rows; in new, r03 and r07 point elsewhere, r10 failed, r11 missing."""
    base = _vectors(1)
    new = base * 1.5  # scaled: cosine 1 (cosine ignores length)
    new[3] = _vectors(2)[3]
    new[7] = -base[7]  # opposite: cosine -1
    base_out = write_output(tmp_path / "base", _rows(base), embedding_dim=DIM)
    new_out = write_output(tmp_path / "new", _rows(new, failed=(10,), skip=(11,)), embedding_dim=DIM)
    return base, new, base_out, new_out


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


class TestCosine:
    def test_per_row_cosine_and_what_min_agreement_gates(self, pair, capsys):
        """Mean, percentiles and the fraction under the threshold of rows ok in both; agreement: the rest."""
        base, new, base_out, new_out = pair
        assert main(["compare", str(base_out), str(new_out), "--json"]) == 0
        doc = _json(capsys)
        assert doc["task"] == "embed"
        ok = [i for i in range(ROWS) if i not in (10, 11)]
        expected = [_cosine(base[i], new[i]) for i in ok]
        cosine = doc["cosine"]
        assert cosine["rows"] == len(ok) == 10
        assert cosine["mean"] == pytest.approx(np.mean(expected), abs=1e-6)
        assert cosine["min"] == pytest.approx(-1.0, abs=1e-6)
        assert cosine["percentiles"]["p50"] == pytest.approx(1.0, abs=1e-6)
        assert cosine["threshold"] == 0.99
        assert cosine["below_threshold"] == 2
        assert cosine["fraction_below"] == pytest.approx(0.2)
        assert doc["agreement"] == pytest.approx(0.8)
        assert [row["row_id"] for row in doc["lowest_cosine"][:2]] == ["r07", "r03"]
        assert doc["rows"]["failed_only_in_new"] == 1
        assert doc["rows"]["only_in_base"] == 1
        assert doc["top1_agreement"] is None

    def test_nearest_neighbours_agree_as_numpy_finds_them(self, pair, capsys):
        """On the sample (all 10 rows here) each row's nearest other row in base and in new, compared."""
        base, new, base_out, new_out = pair
        assert main(["compare", str(base_out), str(new_out), "--json"]) == 0
        neighbours = _json(capsys)["neighbours"]
        ok = [i for i in range(ROWS) if i not in (10, 11)]
        expected = np.mean(_nearest(base[ok]) == _nearest(new[ok]))
        assert neighbours["sample"] == 10
        assert neighbours["agreement"] == pytest.approx(expected)
        assert neighbours["agreement"] < 1.0  # r03 and r07 moved: some neighbour changed

    @pytest.mark.parametrize(("minimum", "code"), [(0.8, 0), (0.81, AgreementTooLowError.exit_code)])
    def test_min_agreement_is_the_cosine_fraction(self, pair, capsys, minimum, code):
        """--min-agreement X: exit 9 when fewer than X of the rows ok in both have cosine >= the threshold."""
        _, _, base_out, new_out = pair
        assert main(["compare", str(base_out), str(new_out), "--min-agreement", str(minimum)]) == code
        captured = capsys.readouterr()
        assert "cosine" in captured.out
        if code:
            assert "80.0% of rows have cosine >= 0.99" in captured.err
            assert f"below --min-agreement {minimum:.1%}" in captured.err

    def test_a_stricter_threshold_counts_more_rows_under_it(self, pair, capsys):
        """--cosine-threshold moves the line; scaled vectors keep cosine 1 and stay above any."""
        _, _, base_out, new_out = pair
        args = ["compare", str(base_out), str(new_out), "--json", "--cosine-threshold", "-0.5"]
        assert main(args) == 0
        assert _json(capsys)["cosine"]["below_threshold"] == 1  # only the opposite vector

    def test_text_names_the_cosine_not_labels(self, pair, capsys):
        """The text shows cosine figures and the neighbour agreement; nothing about labels or top-k."""
        _, _, base_out, new_out = pair
        assert main(["compare", str(base_out), str(new_out)]) == 0
        text = capsys.readouterr().out
        assert "cosine     mean" in text
        assert "2 of 10 rows (20.0%) below 0.99" in text
        assert "neighbours" in text
        assert "top-" not in text
        assert "label" not in text


def test_the_clis_default_threshold_is_the_modules():
    """`--cosine-threshold`'s default (kept in the CLI, which starts without DuckDB) is compare's."""
    from pipeline.cli import review_commands
    from pipeline.review import compare

    assert review_commands.COSINE_THRESHOLD == compare.COSINE_THRESHOLD


class TestRefused:
    def test_classify_against_embed_is_refused_with_a_message(self, pair, tmp_path, write_output, capsys):
        """A classify output and an embed output hold different things: exit 2 naming both tasks."""
        _, _, base_out, _ = pair
        labels = write_output(
            tmp_path / "labels", [{"row_id": "r00", "status": "ok", "top_k_labels": ["cat"]}]
        )
        assert main(["compare", str(labels), str(base_out)]) == 2
        err = capsys.readouterr().err
        assert "classify output" in err
        assert "embed output" in err
        assert "Traceback" not in err

    def test_vectors_of_another_dimension_are_refused(self, pair, tmp_path, write_output, capsys):
        """Cosine needs one dimension on both sides: exit 2 naming both."""
        _, _, base_out, _ = pair
        other = write_output(
            tmp_path / "wide", _rows(np.ones((2, DIM * 2), dtype=np.float32)), embedding_dim=DIM * 2
        )
        assert main(["compare", str(base_out), str(other)]) == 2
        assert "dimension 8" in capsys.readouterr().err

    def test_cosine_threshold_outside_minus_1_to_1_is_a_usage_error(self, pair, capsys):
        """A cosine lies in [-1, 1]: another threshold is refused before anything is read."""
        _, _, base_out, new_out = pair
        assert main(["compare", str(base_out), str(new_out), "--cosine-threshold", "1.5"]) == 2
        assert "--cosine-threshold" in capsys.readouterr().err
