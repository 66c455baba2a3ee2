"""One fsspec filesystem per URI scheme, made from :class:`~pipeline.config.StorageConfig`.

S3 credentials only from the AWS chain, so none reach logs or the manifest; S3's requests are
bounded and counted by :mod:`pipeline.storage.s3_client`. :class:`Filesystems` travel to the decode
workers, which read inputs with :mod:`pipeline.inputs.reading`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import StorageError
from pipeline.storage.uris import S3_SCHEMES, is_remote

if TYPE_CHECKING:
    import fsspec

    from pipeline.config.sections import StorageConfig


RETRY_MODE = "standard"


def storage_options(storage: StorageConfig) -> dict[str, Any]:
    """Options for fsspec's S3 filesystem: endpoint, region, timeouts and botocore's retries.

    Retries: botocore's ``standard`` mode (backoff with jitter on throttling, 5xx, timeouts and
    refused connections), ``max_attempts`` tries per request. Listings are never cached (Ray
    workers write under the same prefixes). No credentials: botocore finds them itself.
    """
    client_kwargs: dict[str, Any] = {}
    if storage.endpoint_url:
        client_kwargs["endpoint_url"] = storage.endpoint_url
    if storage.region:
        client_kwargs["region_name"] = storage.region
    return {
        "anon": storage.anonymous,
        "client_kwargs": client_kwargs,
        "config_kwargs": {
            "retries": {"max_attempts": storage.max_attempts, "mode": RETRY_MODE},
            "connect_timeout": storage.connect_timeout_s,
            "read_timeout": storage.read_timeout_s,
        },
        "use_listings_cache": False,
        "call_timeout_s": storage.call_timeout_s,  # storage.s3_client: every request, retries included
    }


def fsspec_filesystem(uri: str, storage: StorageConfig, retry_sink: Any = None) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem that serves ``uri``; S3's bounded and counting (``s3_client``).

    ``retry_sink``: where an S3 filesystem reports its retries (the run's progress tracker).
    """
    import fsspec

    if not is_remote(uri):
        return fsspec.filesystem("file")
    protocol = uri.split("://", 1)[0]
    try:
        if protocol in S3_SCHEMES:
            from pipeline.storage.s3_client import BoundedS3FileSystem

            return BoundedS3FileSystem(**storage_options(storage), retry_sink=retry_sink)
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"no filesystem for {protocol}:// URIs: {exc}") from exc


class Filesystems:
    """One fsspec filesystem per URI scheme (with the configured endpoint), made on first use.

    Each row is read through the filesystem of its own scheme, so a manifest mixing
    local paths and ``s3://`` URIs reads each from where it is.
    """

    def __init__(self, storage: StorageConfig, retry_sink: Any = None) -> None:
        self.storage = storage
        self.retry_sink = retry_sink  # where S3 retries are reported (the run's progress tracker)
        self._made: dict[str, fsspec.AbstractFileSystem] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage, "retry_sink": self.retry_sink, "_made": {}}  # workers make their own

    def for_scheme(self, scheme: str) -> fsspec.AbstractFileSystem:
        """The filesystem serving ``scheme://`` URIs."""
        if scheme not in self._made:
            self._made[scheme] = fsspec_filesystem(f"{scheme}://x", self.storage, self.retry_sink)
        return self._made[scheme]
