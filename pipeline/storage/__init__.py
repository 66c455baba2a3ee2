"""Storage: local paths and object stores, each reached through one bounded, counted client.

The package's API is re-exported here (``from pipeline import storage``; ``storage.fs_path``):
URIs (:mod:`~pipeline.storage.uris`), one filesystem per scheme
(:mod:`~pipeline.storage.filesystems`, S3's bounded in :mod:`~pipeline.storage.s3_client` with its
retries counted by :mod:`~pipeline.storage.s3_retries`), what a failure means
(:mod:`~pipeline.storage.failures`), and writes that are all or nothing
(:mod:`~pipeline.storage.atomic_writes`). Nothing here knows inputs or outputs.
"""

from pipeline.storage.failures import (
    HTTP_PRECONDITION_FAILED,
    HTTP_SERVER_ERROR,
    MAX_DETAIL_CHARS,
    RETRIED_IO_ERRORS,
    RETRYABLE_STATUS,
    TRANSIENT_CODES,
    TRANSIENT_ERRNOS,
    botocore_errors,
    describe,
    is_storage_error,
    is_transient,
    response_code,
    storage_error,
    translate_errors,
)
from pipeline.storage.filesystems import RETRY_MODE, Filesystems, fsspec_filesystem, storage_options
from pipeline.storage.uris import LOCAL_SCHEMES, S3_SCHEMES, fs_path, is_remote, normalise, scheme_of

__all__ = [
    "HTTP_PRECONDITION_FAILED",
    "HTTP_SERVER_ERROR",
    "LOCAL_SCHEMES",
    "MAX_DETAIL_CHARS",
    "RETRIED_IO_ERRORS",
    "RETRYABLE_STATUS",
    "RETRY_MODE",
    "S3_SCHEMES",
    "TRANSIENT_CODES",
    "TRANSIENT_ERRNOS",
    "Filesystems",
    "botocore_errors",
    "describe",
    "fs_path",
    "fsspec_filesystem",
    "is_remote",
    "is_storage_error",
    "is_transient",
    "normalise",
    "response_code",
    "scheme_of",
    "storage_error",
    "storage_options",
    "translate_errors",
]
