"""Incremental runs over shards: unchanged shards' records carried, the output equal to a full run.

Three real ``run_job`` calls on the shared Ray session over Parquet shards of a dozen tiny
records each: night 1 in full, then night 2 (a shard removed, one rewritten, one added, two
unchanged, one of them holding a broken record) incrementally and in full.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.cli import sample_shards, samples
from pipeline.outputs.layout import DATA_DIR
from pipeline.outputs.shard_ledger import read_ledger
from pipeline.run.job import run_job

TINY = {"preprocess__resize_size": 40, "preprocess__crop_size": 32, "inference__batch_size": 16}
PER_SHARD = 12
NOT_COMPARED = {"run_id"}  # each run's own id; every other column must be the full run's
FP32 = {"score", "top_k_scores"}


def _shard(files: list[Path], target: Path) -> None:
    """``files`` as one Parquet shard at ``target`` (no key column: ids are ``<shard>#<row>``)."""
    scratch = target.parent / f".{target.stem}"
    (written,) = sample_shards.parquet_shards(files, scratch, 1)
    shutil.move(written, target)
    shutil.rmtree(scratch)


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    """The output's rows by row id (each id once)."""
    table = pq.read_table(out / DATA_DIR)
    rows = {row["row_id"]: row for row in table.to_pylist()}
    assert len(rows) == table.num_rows
    return rows


@pytest.fixture(scope="module")
def nights(ray_session, local_config, tmp_path_factory) -> dict[str, Any]:
    """Night 1 in full; night 2 incrementally from it and in full; their summaries and outputs."""
    root = tmp_path_factory.mktemp("shard-carry")
    files = samples.make_images(root / "images", 5 * PER_SHARD, seed=11, sizes=((40, 32), (32, 40)))
    broken = files[5 * PER_SHARD]  # the empty file: fails, and fails again when retried
    groups = [files[i * PER_SHARD : (i + 1) * PER_SHARD] for i in range(5)]
    shards = root / "shards"
    shards.mkdir()
    _shard(groups[0], shards / "a.parquet")  # removed on night 2
    _shard([*groups[1][:-1], broken], shards / "b.parquet")  # unchanged, one failed record
    _shard(groups[2], shards / "c.parquet")  # rewritten on night 2
    _shard(groups[3], shards / "d.parquet")  # unchanged
    first = local_config(shards, root / "night-1", input__format="parquet", **TINY)
    run_job(first)
    (shards / "a.parquet").unlink()
    _shard(groups[4][::-1], shards / "c.parquet")  # other images under the same record ids
    _shard(groups[4], shards / "e.parquet")  # new
    incremental = local_config(
        shards, root / "incremental", input__format="parquet", output__previous=root / "night-1", **TINY
    )
    full = local_config(shards, root / "full", input__format="parquet", **TINY)
    return {
        "incremental": run_job(incremental),
        "full": run_job(full),
        "out": root / "incremental",
        "full_out": root / "full",
    }


@pytest.mark.slow
class TestShardCarry:
    def test_incremental_output_equals_a_full_recompute(self, nights: dict[str, Any]) -> None:
        """Carried and recomputed records together are the full run's rows, column for column."""
        carried, full = _rows(nights["out"]), _rows(nights["full_out"])
        assert set(carried) == set(full)
        for row_id, row in carried.items():
            wanted = full[row_id]
            for column in set(row) - NOT_COMPARED:
                if column in FP32 and row[column] is not None:  # fp32 sums vary with the batch a row ran in
                    assert row[column] == pytest.approx(wanted[column], abs=1e-5), (row["uri"], column)
                else:
                    assert row[column] == wanted[column], (row["uri"], column)

    def test_counts_are_records_and_only_the_rest_is_read(self, nights: dict[str, Any]) -> None:
        """Carried, computed, retried, dropped count records; only the records not carried are computed."""
        summary = nights["incremental"]
        counts = {key: summary.incremental.get(key) for key in ("carried", "computed", "retried", "dropped")}
        # b: 11 ok carried, its failed one retried; d: 12 carried; c (changed) and e (new): 24 computed.
        assert counts == {"carried": 23, "computed": 25, "retried": 1, "dropped": PER_SHARD}
        assert summary.inputs == nights["full"].inputs == 4 * PER_SHARD
        assert summary.processed_this_run == 25  # the carried records were never read again
        assert (summary.succeeded, summary.failed) == (nights["full"].succeeded, nights["full"].failed)
        ledger = read_ledger(_location(nights["out"]))
        assert {index: entry.records for index, entry in ledger.items()} == dict.fromkeys(range(4), PER_SHARD)


def _location(out: Path) -> Any:
    """The output at ``out``, as the ledger reader takes it."""
    from pipeline.config import StorageConfig
    from pipeline.outputs.layout import OutputLocation

    return OutputLocation.open(str(out), StorageConfig())
