"""URIs: local paths and ``scheme://`` URIs, normalised, and the path each filesystem expects."""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_SCHEMES = ("", "file")


S3_SCHEMES = ("s3", "s3a")  # served by s3fs with storage_options; exclusive create supported


def is_remote(uri: str) -> bool:
    """True for ``scheme://`` URIs other than ``file://``: read through an fsspec client, not the OS."""
    return scheme_of(uri) not in LOCAL_SCHEMES


def normalise(uri: str) -> str:
    """Local paths become absolute (``..`` folded, symlinks kept); remote URIs lose a trailing slash."""
    if is_remote(uri):
        return uri.rstrip("/")
    return os.path.abspath(Path(uri.removeprefix("file://")).expanduser())  # noqa: PTH100  # resolve() follows symlinks


def scheme_of(uri: str) -> str:
    """``s3``, ``https``, ... of a URI; ``""`` for a plain local path, ``file`` for ``file://``."""
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def fs_path(uri: str) -> str:
    """The path part fsspec and pyarrow expect (``bucket/key`` for S3)."""
    return uri.split("://", 1)[1] if is_remote(uri) else uri
