"""Outputs as tables: the verified parts committed to an Iceberg table or a Lance dataset, once per run.

The run writes and tallies its Parquet parts as every run does; then :func:`.table_commit.commit_run` makes
ONE table commit (an Iceberg snapshot, a Lance version) whose properties carry the run id and
the config hash. The table's own history is the record of what was committed: a run id found
there is never committed again (:class:`~pipeline.errors.TableCommitRefusedError`), so a rerun
after a crash between the table commit and ``_SUCCESS`` only writes ``_SUCCESS``.
"""
