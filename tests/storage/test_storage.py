"""pipeline.storage and .reading against a real S3 API (moto_server): filesystems, listing, reads, errors."""

from __future__ import annotations

import pickle
import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from helpers import free_port
from storage_s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, upload_images

from pipeline import storage
from pipeline.config import InputConfig, StorageConfig
from pipeline.errors import InputError, StorageError
from pipeline.inputs import reading
from pipeline.inputs.listing import list_inputs
from pipeline.outputs import layout
from pipeline.schema import FailureReason

pytestmark = pytest.mark.slow  # starts moto_server (an external server)


def s3_settings(endpoint: str, **overrides: object) -> StorageConfig:
    """Storage settings for the test server (or a dead endpoint)."""
    values: dict[str, object] = {"endpoint_url": endpoint, "region": "us-east-1", "max_attempts": 3}
    values.update(overrides)
    return StorageConfig.model_validate(values)


def client_error(code: str, status: int) -> ClientError:
    """A botocore ClientError as S3 would answer it."""
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


class TestFilesystem:
    def test_options_configure_endpoint_region_retries_and_no_credentials(self):
        """The s3fs options carry endpoint, region, timeouts and botocore retries, and no credential field."""
        settings = StorageConfig(endpoint_url="http://minio:9000", region="eu-west-1", max_attempts=7)
        options = storage.storage_options(settings)
        assert options["client_kwargs"] == {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"}
        assert options["config_kwargs"]["retries"] == {"max_attempts": 7, "mode": "standard"}
        assert options["config_kwargs"]["connect_timeout"] == settings.connect_timeout_s
        assert options["use_listings_cache"] is False
        assert not {"key", "secret", "token", "retries"} & set(options)

    def test_filesystem_lists_a_bucket(self, s3, bucket, moto):
        """The configured s3fs filesystem talks to the endpoint (credentials from the environment)."""
        s3.put_object(Bucket=bucket, Key="a/b.jpg", Body=b"x")
        fs = storage.fsspec_filesystem(f"s3://{bucket}/a", s3_settings(moto.endpoint))
        assert fs.find(f"{bucket}/a") == [f"{bucket}/a/b.jpg"]

    def test_pickled_filesystem_carries_no_credentials_and_still_works(self, s3, bucket, moto):
        """What Ray ships to workers holds the endpoint but no key, and works after unpickling."""
        s3.put_object(Bucket=bucket, Key="a/b.jpg", Body=b"payload")
        fs = storage.fsspec_filesystem(f"s3://{bucket}/a", s3_settings(moto.endpoint))
        fs.ls(bucket)  # connected: a session with credentials exists in this object
        arrow_view = layout.OutputLocation.open(f"s3://{bucket}/a", s3_settings(moto.endpoint)).arrow_fs()
        for obj in (fs, arrow_view):
            blob = pickle.dumps(obj)
            assert moto.endpoint.encode() in blob
            assert FAKE_ACCESS_KEY_ID.encode() not in blob
            assert FAKE_SECRET_ACCESS_KEY.encode() not in blob
        assert pickle.loads(pickle.dumps(fs)).cat_file(f"{bucket}/a/b.jpg") == b"payload"  # noqa: S301


class TestUris:
    @pytest.mark.parametrize(
        ("uri", "remote"),
        [
            ("s3://bucket/key.jpg", True),
            ("s3a://bucket/key.jpg", True),
            ("https://host/x.jpg", True),
            ("/data/x.jpg", False),
            ("relative/x.jpg", False),
            ("file:///data/x.jpg", False),
        ],
    )
    def test_is_remote_is_any_scheme_but_file(self, uri, remote):
        """Every URI with a scheme other than file:// is read through a storage client, not the OS."""
        assert storage.is_remote(uri) is remote


class TestListing:
    def test_lists_images_under_a_prefix_in_order(self, s3, bucket, moto):
        """Every image under the prefix is found, as sorted s3:// URIs."""
        uris = upload_images(s3, bucket, "in", 5)
        s3.put_object(Bucket=bucket, Key="in/notes.txt", Body=b"not an image extension")
        listing = list_inputs(InputConfig(uri=f"s3://{bucket}/in/"), s3_settings(moto.endpoint))
        assert listing.uris == uris

    def test_missing_prefix_is_an_input_error(self, bucket, moto):
        """A prefix with nothing under it says the input does not exist."""
        with pytest.raises(InputError, match="does not exist"):
            list_inputs(InputConfig(uri=f"s3://{bucket}/nothing"), s3_settings(moto.endpoint))

    def test_dead_endpoint_is_a_storage_error_quickly(self):
        """Listing with nothing listening fails within the configured attempts, naming the endpoint."""
        endpoint = f"http://127.0.0.1:{free_port()}"
        started = time.monotonic()
        with pytest.raises(StorageError, match="storage unreachable") as caught:
            list_inputs(
                InputConfig(uri="s3://bucket/in"), s3_settings(endpoint, max_attempts=2, connect_timeout_s=1)
            )
        assert time.monotonic() - started < 20
        assert endpoint in str(caught.value)
        assert FAKE_SECRET_ACCESS_KEY not in str(caught.value)


LIMITS = reading.ReadLimits(max_bytes=1 << 20, timeout_s=30)


class TestFetch:
    def test_fetch_returns_bytes(self, s3, bucket, moto):
        """An object's bytes come back with no failure reason."""
        s3.put_object(Bucket=bucket, Key="x.jpg", Body=b"jpeg")
        fs = storage.Filesystems(s3_settings(moto.endpoint))
        assert reading.fetch(fs, f"s3://{bucket}/x.jpg", LIMITS) == (b"jpeg", None, "")

    def test_missing_object_is_a_row_failure(self, bucket, moto):
        """An object deleted after listing becomes the row's not_found reason."""
        fs = storage.Filesystems(s3_settings(moto.endpoint))
        data, reason, _ = reading.fetch(fs, f"s3://{bucket}/gone.jpg", LIMITS)
        assert (data, reason) == (None, FailureReason.NOT_FOUND)

    def test_unreachable_storage_is_raised_not_recorded(self):
        """An outage fails the task (the run stays resumable) instead of failing rows for good."""
        endpoint = f"http://127.0.0.1:{free_port()}"
        fs = storage.Filesystems(s3_settings(endpoint, max_attempts=1, connect_timeout_s=1))
        with pytest.raises(EndpointConnectionError):
            reading.fetch(fs, "s3://bucket/key.jpg", LIMITS)


class TestErrors:
    @pytest.mark.parametrize(
        ("exc", "transient"),
        [
            (client_error("SlowDown", 503), True),
            (client_error("InternalError", 500), True),
            (client_error("NoSuchKey", 404), False),
            (client_error("InvalidObjectState", 403), False),
            (EndpointConnectionError(endpoint_url="http://x"), True),
            (TimeoutError("read timed out"), True),
            (FileNotFoundError("k"), False),
        ],
    )
    def test_transient_errors_are_told_apart(self, exc, transient):
        """Throttling, 5xx, timeouts and connection failures are transient; object errors are not."""
        assert storage.is_transient(exc) is transient

    def test_s3fs_wrapped_slowdown_is_transient(self):
        """s3fs turns an unmapped ClientError into OSError with the ClientError as cause: still transient."""
        wrapped = OSError(5, "Please reduce your request rate.")
        wrapped.__cause__ = client_error("SlowDown", 503)
        assert storage.is_transient(wrapped)
        assert not reading.is_object_error(wrapped)

    def test_descriptions_hide_credentials(self, monkeypatch):
        """Secret values from the environment and URL userinfo never reach an error message."""
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-xyz")
        exc = OSError("denied for s3cr3t-value-xyz at http://user:pw@host:9000/b")
        text = storage.describe(exc)
        assert "s3cr3t-value-xyz" not in text
        assert "user:pw" not in text
        assert "http://***@host:9000/b" in text
