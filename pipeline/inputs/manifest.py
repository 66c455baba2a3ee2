"""An input manifest: its URI column, and the columns carried unchanged to the output.

A manifest (Parquet or CSV) names the inputs in one column (``input.manifest_column``);
``input.passthrough_columns`` names others to copy into every output row, ok or failed,
so the output joins back to the user's table by the user's own key.

How the carried values travel: the driver reads them here as one Arrow table, row for row
with the listing, and puts it in Ray's object store once; each row carries only its index
(:data:`~pipeline.schema.CARRIED_INDEX_COLUMN`, an int64) through the decode stage, and the
inference actor appends the values with Arrow's ``take``. So no value passes through numpy
(which turns an int64 with nulls into a float and loses ids above 2**53, and a struct into
Python objects), every type arrives as the manifest holds it, nulls stay null, and every part
has the same schema whatever its rows hold. The only change is the one Parquet itself makes
(:func:`as_parquet_stores`), applied up front so the in-flight and written types are equal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import fsspec


def read_manifest(
    uri: str, path: str, column: str, fs: fsspec.AbstractFileSystem, carried: Sequence[str] = ()
) -> tuple[list[str], int, pa.Table | None]:
    """The manifest's URIs exactly as written, how many URI cells were blank, and the carried columns.

    The carried table (None when no column is carried) has one row per URI, in order: rows
    whose URI cell is blank are dropped from it as from the listing.
    """
    import pyarrow.csv
    import pyarrow.parquet

    with fs.open(path, "rb") as handle:
        if uri.lower().endswith(".csv"):  # CSV has no types: the text as written (000999 stays so)
            text = {name: pa.string() for name in (column, *carried)}
            options = pyarrow.csv.ConvertOptions(
                column_types=text, strings_can_be_null=True, quoted_strings_can_be_null=False
            )
            table = pyarrow.csv.read_csv(handle, convert_options=options)
        else:
            table = pyarrow.parquet.read_table(handle)
    if column not in table.column_names:
        raise InputError(
            f"manifest {uri} has no column {column!r} (columns: {', '.join(table.column_names)}); "
            "set input.manifest_column"
        )
    missing = [name for name in carried if name not in table.column_names]
    if missing:
        raise InputError(
            f"manifest {uri} has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(table.column_names)}); fix input.passthrough_columns or "
            "input.version_column"
        )
    values = [None if value is None else str(value) for value in table.column(column).to_pylist()]
    keep = [value is not None and bool(value.strip()) for value in values]
    uris = [value for value, kept in zip(values, keep, strict=True) if kept and value is not None]
    kept_rows = table.select(list(carried)).filter(pa.array(keep)) if carried else None
    return uris, len(values) - len(uris), None if kept_rows is None else as_parquet_stores(kept_rows)


def _stored_type(kind: pa.DataType) -> pa.DataType:
    """The type Parquet gives back for ``kind``: it has no second-resolution timestamp nor date64."""
    if pa.types.is_timestamp(kind) and kind.unit == "s":
        return pa.timestamp("ms", kind.tz)
    if pa.types.is_date64(kind):
        return pa.date32()
    return kind


def as_parquet_stores(table: pa.Table) -> pa.Table:
    """``table`` with its columns cast to the types its Parquet parts will read back as.

    A CSV manifest's timestamps are inferred at second resolution (``timestamp[s]``); Parquet
    stores them in milliseconds. Field metadata (Parquet field ids) is dropped: the output is
    a new file. A Parquet manifest's columns are unchanged.
    """
    fields = [pa.field(f.name, _stored_type(f.type), f.nullable) for f in table.schema]
    return table.cast(pa.schema(fields))


def described(schema: pa.Schema) -> list[dict[str, str]]:
    """The carried columns as ``_run.json`` and ``_SUCCESS`` record them: name and Arrow type, in order."""
    return [{"name": field.name, "type": str(field.type)} for field in schema]


def rows_to_do(carried: pa.Table, uris: Sequence[str], todo: Sequence[str]) -> pa.Table:
    """The carried rows of the inputs still ``todo`` (a resume skips the written ones), in order."""
    if len(todo) == len(uris):
        return carried
    wanted = pc.is_in(pa.array(uris, pa.string()), value_set=pa.array(todo, pa.string()))
    return carried.filter(wanted)


def check_resumed_types(recorded: Any, carried: pa.Table | None, manifest: str, run_id: str) -> None:
    """Refuse to resume when a carried column's type changed since the run started.

    Parts written before and after would disagree on the column's type; the output could not
    be read as one table. ``recorded`` is the list :func:`described` wrote into ``_run.json``.
    """
    now = described(carried.schema) if carried is not None else []
    if recorded is None or recorded == now:
        return
    was = {item["name"]: item["type"] for item in recorded}
    changed = [
        f"{item['name']} {was.get(item['name'], 'absent')} -> {item['type']}"
        for item in now
        if was.get(item["name"]) != item["type"]
    ]
    raise InputError(
        f"manifest {manifest} changed since run {run_id!r} started: carried columns "
        f"{'; '.join(changed) or 'differ'}; parts already written hold the old types. Resume with the "
        "manifest it started with, or pass --overwrite to start again"
    )
