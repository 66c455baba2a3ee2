"""Checks of the ``input`` section that need more than one of its keys, and what ``auto`` reads.

Carried columns (``input.passthrough_columns``) come from a manifest or from shards: a
listing of loose files has no columns to carry. A name is carried once, never under a name
the output uses, never the column the images or URIs come from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import ConfigError, InputError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from collections.abc import Set as AbstractSet

    from pipeline.config import InputConfig

KEY = "input.passthrough_columns"
SHARD_SUFFIXES = {"parquet": (".parquet",), "webdataset": (".tar",)}


def detect_format(paths: Sequence[str], extensions: Sequence[str], uri: str) -> str:
    """``input.format: auto``: files when only images are there, a shard format when only its shards are.

    A folder holding two kinds is refused rather than guessed.
    """
    found = {"files": tuple(extensions), **SHARD_SUFFIXES}
    kinds = [kind for kind, suffixes in found.items() if any(p.lower().endswith(suffixes) for p in paths)]
    if len(kinds) > 1:
        raise InputError(
            f"input {uri} holds {' and '.join(kinds)} alike; set input.format to the one to read"
        )
    return kinds[0] if kinds else "files"


def check_input(source: InputConfig, reserved: AbstractSet[str]) -> None:
    """Refuse carried columns that cannot be carried (``reserved``: the names the output uses)."""
    names = source.passthrough_columns
    if names and not source.is_manifest and source.format in ("auto", "files"):
        raise ConfigError(
            KEY,
            names,
            f"needs a .parquet or .csv manifest as input.uri, or shards named by input.format "
            f"(parquet, webdataset); {source.uri} is a directory or prefix, whose listing of files "
            "has no columns to carry",
        )
    for index, name in enumerate(names):
        if not name.strip() or name in names[:index]:
            raise ConfigError(KEY, name, "each name must be a manifest or shard column, given once")
        if name in reserved:
            raise ConfigError(
                KEY,
                name,
                f"the output has a column {name!r} already (names the pipeline uses: "
                f"{', '.join(sorted(reserved))}); rename it in the manifest",
            )
        if source.is_manifest and name == source.manifest_column:
            raise ConfigError(
                KEY,
                name,
                "it is input.manifest_column, written as the output's uri column (signed "
                "query strings masked); carry a key column of your own to join on",
            )
        if not source.is_manifest and name == source.image_column:
            raise ConfigError(KEY, name, "it is input.image_column, the images' bytes: they are not carried")
