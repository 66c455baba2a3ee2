"""pipeline.ops.logs: JSON or console lines, run id on every line, sampling, and redaction."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from pipeline.ops import logs
from pipeline.ops.logs import BadInputSampler, Redactor
from pipeline.ops.redaction import REDACTED, secret_values

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"  # noqa: S105  # a fake credential


def fail_with(message: str) -> None:
    """Raise the error a storage client would, with a secret in its message."""
    raise RuntimeError(message)


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every line of the buffer parsed as JSON (fails on a line that is not)."""
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.mark.usefixtures("structlog_reset")
class TestConfigure:
    def test_json_lines_carry_run_id_stage_level_and_time(self) -> None:
        """In JSON mode every line is one JSON object with the bound run id and stage."""
        buffer = io.StringIO()
        logs.configure("json", stream=buffer)
        log = logs.get_logger(run_id="r-1", stage="driver")
        log.info("run starting", inputs=3)
        log.warning("overwriting existing output")
        lines = json_lines(buffer)
        assert [line["event"] for line in lines] == ["run starting", "overwriting existing output"]
        for line in lines:
            assert line["run_id"] == "r-1"
            assert line["stage"] == "driver"
            assert line["level"] in {"info", "warning"}
            assert line["timestamp"].endswith("Z")

    def test_console_lines_are_readable_text(self) -> None:
        """Console mode renders key=value text, not JSON."""
        buffer = io.StringIO()
        logs.configure("console", stream=buffer)
        logs.get_logger(run_id="r-1", stage="driver").info("run starting", inputs=3)
        line = buffer.getvalue().strip()
        assert "run starting" in line
        assert "run_id=r-1" in line
        assert not line.startswith("{")

    def test_auto_is_json_when_not_a_terminal(self) -> None:
        """``auto`` writes JSON to a stream that is not a TTY (a pod's stdout)."""
        buffer = io.StringIO()
        logs.configure("auto", stream=buffer)
        logs.get_logger(run_id="r-1", stage="driver").info("hello")
        assert json_lines(buffer)[0]["event"] == "hello"

    def test_level_filters(self) -> None:
        """Lines below the configured level are dropped."""
        buffer = io.StringIO()
        logs.configure("json", level="warning", stream=buffer)
        log = logs.get_logger(run_id="r-1", stage="driver")
        log.info("dropped")
        log.warning("kept")
        assert [line["event"] for line in json_lines(buffer)] == ["kept"]

    def test_bind_run_puts_the_run_id_on_every_line(self) -> None:
        """After bind_run, even a logger bound with only a stage carries the run id and pipeline."""
        buffer = io.StringIO()
        logs.configure("json", stream=buffer)
        logs.bind_run("r-9", "nightly")
        logs.get_logger(stage="storage").info("listing")
        logs.unbind_run()
        logs.get_logger(stage="storage").info("after")
        first, second = json_lines(buffer)
        assert (first["run_id"], first["pipeline"]) == ("r-9", "nightly")
        assert "run_id" not in second

    def test_secrets_never_reach_the_output(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The AWS secret in the environment and secret-looking keys are masked wherever they appear."""
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        buffer = io.StringIO()
        logs.configure("json", stream=buffer)
        log = logs.get_logger(run_id="r-1", stage="driver")
        message = f"connecting with {SECRET}"
        log.info(message, storage_options={"key": "AKIA", "secret": "hunter2hunter2"})
        log.info("creds", aws_secret_access_key=SECRET, password="hunter2hunter2", api_key="k-123456789")  # noqa: S106
        log.info("nested", details=[{"note": f"tail {SECRET}"}, (SECRET,)], path=io.StringIO)
        log.info("url", uri="s3://AKIAEXAMPLE:hunter2hunter2@bucket/key.jpg")
        try:
            fail_with(f"request signed with {SECRET} failed")
        except RuntimeError:
            log.exception("upload failed")
        log.error("object", error=RuntimeError(SECRET))
        output = buffer.getvalue()
        assert SECRET not in output
        assert "hunter2hunter2" not in output
        assert "k-123456789" not in output
        lines = json_lines(buffer)
        assert len(lines) == 6
        assert lines[1]["aws_secret_access_key"] == REDACTED
        assert lines[0]["storage_options"] == {"key": "AKIA", "secret": REDACTED}
        assert lines[3]["uri"] == "s3://***@bucket/key.jpg"
        assert REDACTED in lines[4]["exception"]


class TestSecretValues:
    def test_known_names_and_secret_looking_names(self) -> None:
        """AWS keys count from 6 characters, names ending like a secret from 8; flags and paths do not."""
        environ = {
            "AWS_SECRET_ACCESS_KEY": "abcdef",
            "HF_TOKEN": "hf_0123456789",
            "DB_PASSWORD": "short",
            "TOKENIZERS_PARALLELISM": "disabled-for-now",
            "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/token",
            "GOOGLE_APPLICATION_CREDENTIALS": "/var/run/secrets/gcp/key.json",
            "HOME": "/root/somewhere",
        }
        assert secret_values(environ) == ["hf_0123456789", "abcdef"]

    def test_extra_secrets_are_comma_separated(self) -> None:
        """PIPELINE_SECRETS adds values, longest first so overlapping secrets mask fully."""
        values = secret_values({"PIPELINE_SECRETS": "alpha-secret, alpha-secret-longer,x"})
        assert "alpha-secret-longer" in values
        assert "alpha-secret" in values
        assert values.index("alpha-secret-longer") < values.index("alpha-secret")
        assert "x" not in values


class TestRedactor:
    def test_signed_url_parameters_are_masked(self) -> None:
        """Presigned S3/GCS/Azure URLs keep their path but lose signatures and tokens."""
        redactor = Redactor([])
        url = "https://b.s3.amazonaws.com/k.jpg?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc123&x=1"
        assert (
            redactor.scrub_text(url)
            == "https://b.s3.amazonaws.com/k.jpg?X-Amz-Credential=***&X-Amz-Signature=***&x=1"
        )
        assert redactor.scrub_text("https://a.blob.core.windows.net/c/x?sv=1&sig=Zm9v") == (
            "https://a.blob.core.windows.net/c/x?sv=1&sig=***"
        )

    def test_numbers_and_none_keep_their_type(self) -> None:
        """Only text is scrubbed: counts stay numbers in the JSON."""
        event = Redactor(["123456"])(
            None, "info", {"event": "x", "rows": 123456, "rate": 1.5, "error": None, "ok": True}
        )
        assert event == {"event": "x", "rows": 123456, "rate": 1.5, "error": None, "ok": True}


class TestBadInputSampler:
    def test_first_few_then_every_nth_per_reason(self) -> None:
        """Per (stage, reason): the first 3 are logged, then every 10th; other reasons count apart."""
        with capture_logs() as captured:
            sampler = BadInputSampler(structlog.get_logger().bind(run_id="r-1"), first=3, every=10)
            logged = [
                sampler.record("decode", "truncated", f"s3://b/{i}.jpg", "cut short") for i in range(1, 31)
            ]
            assert sampler.record("decode", "not_an_image", "s3://b/x.jpg")
        assert [i for i, was_logged in enumerate(logged, start=1) if was_logged] == [1, 2, 3, 10, 20, 30]
        assert len(captured) == 7
        assert captured[0]["uri"] == "s3://b/1.jpg"
        assert captured[0]["stage"] == "decode"
        assert captured[0]["run_id"] == "r-1"
        assert captured[-1]["seen_in_this_worker"] == 1

    @pytest.mark.usefixtures("structlog_reset")
    def test_worker_sampler_configures_logging_once(self) -> None:
        """In a fresh worker process the sampler configures logging itself and binds the run."""
        structlog.reset_defaults()
        logs.bad_input_sampler.cache_clear()
        sampler = logs.bad_input_sampler("nightly", "r-2")
        assert structlog.is_configured()
        assert logs.bad_input_sampler("nightly", "r-2") is sampler
        with capture_logs() as captured:
            sampler.record("decode", "empty_file", "/data/a.jpg")
        assert captured[0]["run_id"] == "r-2"
        assert captured[0]["pipeline"] == "nightly"
