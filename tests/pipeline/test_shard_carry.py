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


def _hand_made_previous(shards: Path, folder: Path, config: Any) -> Any:
    """A committed output over the shards in ``shards`` as listed now, made by hand: 4 records each.

    ``b``'s first record failed; ``c`` is in ``failed_shards`` (not read to its end last time).
    """
    import json

    import pyarrow as pa

    from pipeline.inputs import fingerprints, row_ids
    from pipeline.inputs.listing import list_inputs
    from pipeline.outputs.layout import INPUTS, MANIFEST, OutputLocation
    from pipeline.outputs.previous import Previous
    from pipeline.schema import output_schema

    listing = list_inputs(config.input, config.storage)
    prints = fingerprints.listed(listing, 0, len(listing.uris))
    rows = [
        {
            "row_id": row_ids.row_id(f"{Path(uri).name}#{record}"),
            "uri": f"{uri}#{record}",
            "status": "failed" if uri.endswith("b.parquet") and record == 0 else "ok",
            "fingerprint": prints[index],
            "shard_index": index,
            "run_id": "20261201T000000Z-000000",
            "model_name": "resnet18",
            "model_sha256": "ab" * 32,
        }
        for index, uri in enumerate(listing.uris)
        for record in range(4)
    ]
    (folder / DATA_DIR).mkdir(parents=True)
    files = []
    for part in range(2):  # each part holds records of every shard
        name = f"{DATA_DIR}/part-{part}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[part::2], schema=output_schema(shards=True)), folder / name)
        files.append({"path": name, "rows": len(rows[part::2])})
    pq.write_table(fingerprints.inputs_table(listing), folder / INPUTS)
    failed = [{"uri": uri, "reason": "unreadable", "error": "x"} for uri in listing.uris if "c." in uri]
    manifest = {"input_format": "parquet", "layout": {"files": files}, "failed_shards": failed}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return Previous(OutputLocation.open(str(folder), config.storage), manifest)


class TestCarryShards:
    def test_unchanged_shards_carried_once_indices_rewritten_rest_left_to_read(
        self, local_config: Any, tmp_path: Path
    ) -> None:
        """Unchanged, wholly read shards' records carried once, index rewritten; whole ones in the ledger."""
        from pipeline.inputs.listing import list_inputs
        from pipeline.outputs.layout import OutputLocation
        from pipeline.outputs.shard_carry import carry_shards
        from pipeline.outputs.shard_parts import restore

        shards = tmp_path / "shards"
        shards.mkdir()
        for name in "abce":  # never read here: only listed
            (shards / f"{name}.parquet").write_bytes(name.encode() * 8)
        config = local_config(shards, tmp_path / "out", input__format="parquet")
        previous = _hand_made_previous(shards, tmp_path / "night-1", config)
        (shards / "a.parquet").unlink()  # gone: b, c, d, e are 0, 1, 2, 3 now
        (shards / "d.parquet").write_bytes(b"new")
        listing = list_inputs(config.input, config.storage)
        for keep_failed, carried, retried, whole in ((False, 7, 1, {3: 4}), (True, 8, 0, {0: 4, 3: 4})):
            out = OutputLocation.open(str(tmp_path / f"out-{keep_failed}"), config.storage)
            counts = carry_shards(out, previous, listing, keep_failed=keep_failed)
            assert (counts.carried, counts.retried, counts.dropped) == (carried, retried, 4)
            table = pq.read_table(out.path_of(DATA_DIR))
            by_shard = {
                uri.rsplit("/", 1)[1][0]: index
                for uri, index in zip(
                    table.column("uri").to_pylist(), table.column("shard_index").to_pylist(), strict=True
                )
            }
            assert by_shard == {"b": 0, "e": 3}  # the new listing's indices; c (failed shard) not carried
            ledger = read_ledger(out)
            assert {index: entry.records for index, entry in ledger.items()} == whole
            # The next attempt, after the restore: nothing carried twice; shards not whole read again.
            todo, done = restore(out, listing.uris, "run")
            assert done == carried
            again = carry_shards(out, previous, listing, keep_failed=keep_failed)
            assert (again.carried, again.parts_filtered) == (carried, 0)
            assert pq.read_table(out.path_of(DATA_DIR)).num_rows == carried
            skips = {shard.index: len(shard.skip) for shard in todo}  # b's carried ids skipped
            assert skips == ({0: 3, 1: 0, 2: 0} if not keep_failed else {1: 0, 2: 0})
