"""The inputs of a run: fixed when it starts, and found unchanged when it resumes.

A run fixes its inputs in ``_inputs.parquet`` when it starts: each input's row id and URI
(signatures masked) and, for a folder or prefix, what the listing said of it: its size and its
version, the object's ETag on S3, the file's modification time on a local disk.

A resumed run lists its inputs again and compares. Inputs added, removed or rewritten between a
crash and the resume would leave an output that is neither the old inputs nor the new: added
files left out, removed ones keeping their rows, rewritten ones keeping predictions of bytes
that are gone, all silently. So the resume is refused (exit 2), naming how many inputs were
added, removed and rewritten and the first few of each, as a manifest run already is when its
manifest changed: restore the inputs to resume, or pass ``--overwrite`` to start again. A run
started before inputs were stamped has no sizes or versions: only added and removed inputs are
found there.

An incremental run (:mod:`pipeline.outputs.carry`) compares each input's :func:`fingerprint`
now with the one its previous row holds (its ``fingerprint`` column): the same size and version,
the same bytes, so the row is carried forward without reading the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline import storage
from pipeline.errors import InputError
from pipeline.inputs import row_ids
from pipeline.ops import redaction

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import InputConfig
    from pipeline.inputs.listing import Listing

STAMP_COLUMNS = ("size", "version")
NAMED = 3  # inputs named per kind of change


def fingerprint(stamp: tuple[int, str]) -> str:
    """``<size>:<version>``: an input's fingerprint as its output row stores it (``fingerprint``)."""
    size, version = stamp
    return f"{size}:{version}"


def listed(listing: Listing, start: int, stop: int) -> list[str | None]:
    """The fingerprints of the listing's inputs ``start`` to ``stop``; None where there is none.

    A folder's or prefix's: :func:`fingerprint` of the stamp. A manifest's: ``version:<cell>``
    of its ``input.version_column`` (an empty cell, or no such column: None, computed again).
    """
    if listing.stamps is not None:
        return [fingerprint(stamp) for stamp in listing.stamps[start:stop]]
    if listing.versions is not None:
        return [None if cell is None else f"version:{cell}" for cell in listing.versions[start:stop]]
    return [None] * len(listing.uris[start:stop])


def of_inputs(listing: Listing, uris: list[str]) -> list[str | None]:
    """The fingerprints of ``uris`` (some of the listing's, in listing order); None where none."""
    prints = listed(listing, 0, len(listing.uris))
    if len(uris) == len(listing.uris):  # a new run: every input, in order
        return prints
    by_uri = dict(zip(listing.uris, prints, strict=True))
    return [by_uri[uri] for uri in uris]


def inputs_table(listing: Listing) -> pa.Table:
    """``_inputs.parquet``: row ids of the full URIs, URIs with signatures masked, the listing's stamps."""
    columns = {
        "row_id": [row_ids.row_id(uri) for uri in listing.uris],
        "uri": [redaction.redact_url(uri) for uri in listing.uris],
    }
    if listing.stamps is not None:
        columns["size"] = pa.array([size for size, _ in listing.stamps], pa.int64())
        columns["version"] = pa.array([version for _, version in listing.stamps], pa.string())
    return pa.table(columns)


def check_resumed(
    listing: Listing, source: InputConfig, run_id: str, fixed: Callable[[list[str] | None], pa.Table]
) -> None:
    """Refuse to resume when the inputs listed now are not those the run started with (``fixed``).

    ``fixed(columns)`` reads ``_inputs.parquet`` (those columns; None: all). A resumed manifest
    run reads the manifest again (``_inputs.parquet`` keeps URIs with their signatures masked,
    so it cannot be read from) and must find the same inputs.
    """
    if source.is_manifest:
        started = set(fixed(["row_id"]).column("row_id").to_pylist())
        now = {row_ids.row_id(uri) for uri in listing.uris}
        if now != started:
            raise InputError(
                f"manifest {source.uri} changed since run {run_id!r} started: "
                f"{len(now - started)} inputs added, {len(started - now)} removed; resume with the "
                "manifest it started with, or pass --overwrite to start again"
            )
    else:
        _check_unchanged(fixed(None), listing, source.uri, run_id)


def _check_unchanged(fixed: pa.Table, listing: Listing, source: str, run_id: str) -> None:
    """Refuse a resume whose folder or prefix no longer lists what the run started with."""
    uris = [str(uri) for uri in fixed.column("uri").to_pylist()]
    before: dict[str, tuple[int, str] | None] = dict.fromkeys(uris)
    now: dict[str, tuple[int, str] | None] = dict.fromkeys(listing.uris)
    if set(STAMP_COLUMNS) <= set(fixed.column_names) and listing.stamps is not None:
        sizes, versions = fixed.column("size").to_pylist(), fixed.column("version").to_pylist()
        before = dict(zip(uris, zip(sizes, versions, strict=True), strict=True))
        now = dict(zip(listing.uris, listing.stamps, strict=True))
    # else a run started before inputs were stamped: their names only
    added = [uri for uri in now if uri not in before]
    removed = [uri for uri in before if uri not in now]
    rewritten = [uri for uri, stamp in now.items() if uri in before and before[uri] != stamp]
    if not (added or removed or rewritten):
        return
    version = "ETag" if storage.is_remote(source) else "modification time"
    changes = [
        _named("added", added),
        _named("removed", removed),
        _named(f"rewritten (size or {version} differ)", rewritten),
    ]
    raise InputError(
        f"inputs under {source} changed since run {run_id!r} started: {'; '.join(changes)}. Resuming "
        "would mix them into one output; restore them as they were to resume, or pass --overwrite "
        "to start again"
    )


def _named(what: str, found: list[str]) -> str:
    """``2 added (a.jpg, b.jpg)``: how many, and the first few."""
    shown = ", ".join(redaction.redact_url(uri) for uri in found[:NAMED]) + (
        ", ..." if len(found) > NAMED else ""
    )
    return f"{len(found)} {what}" + (f" ({shown})" if found else "")
