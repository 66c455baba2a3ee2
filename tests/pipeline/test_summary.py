"""The run summary as printed at the end of a run."""

from __future__ import annotations

from pipeline.run.summary import RunSummary


def test_reason_counts_line_up_whatever_the_longest_reason():
    summary = RunSummary(
        run_id="r",
        status="succeeded",
        output_uri="/out",
        failed=5,
        failed_by_reason={"address_not_allowed": 2, "timeout": 3},
    )
    lines = [line for line in summary.render().splitlines() if line.startswith("    ")]
    assert [line.split() for line in lines] == [["address_not_allowed", "2"], ["timeout", "3"]]
    assert len({line.rindex(" ") for line in lines}) == 1  # the counts start in one column
