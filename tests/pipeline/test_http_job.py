"""URL manifests through the real job: one row per URL, retries, secrets kept out, kill and resume.

The images come from a real HTTP server on loopback (tests/pipeline/http_server.py) that
decides which answers fail, and how; the job reads them through ``pipeline run`` (a
subprocess with its own Ray cluster) or :func:`run_job` on the shared test cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import committed_checkpoints
from http_server import BASIC_PASSWORD, BASIC_USER
from test_input_safety import rows_by_uri, write_manifest

from pipeline.config import Config, dump_yaml
from pipeline.inputs import row_ids
from pipeline.ops import redaction
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow

SECRETS = ("c2lnbmF0dXJlLXNlY3JldA", "dG9rZW4tc2VjcmV0LXZhbHVl", BASIC_PASSWORD)  # fakes, searched for
# Short everything: two tries, waits of hundredths of a second, a half-second silence is a timeout.
FAST_HTTP = {
    "http__max_attempts": 2,
    "http__backoff_s": 0.01,
    "http__max_wait_s": 0.05,
    "http__read_timeout_s": 0.5,
    "http__max_redirects": 3,
    "preprocess__max_input_bytes": 1_000_000,
}
SMALL = {"preprocess__resize_size": 40, "preprocess__crop_size": 32}


def _command(config: Config, tmp_path: Path) -> list[str]:
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(config), encoding="utf-8")
    return [sys.executable, "-m", "pipeline", "run", "--config", str(path)]


def _job_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}


def test_every_http_failure_is_one_row_with_its_reason(image_server, make_config, tmp_path, jpegs):
    """Through ``pipeline run``: each kind of answer is one row; no secret reaches an output or a log."""
    base = image_server.url
    host = base.removeprefix("http://")
    local = tmp_path / "local.jpg"
    local.write_bytes(jpegs[0])
    expected = {
        f"{base}/img/0.jpg": None,
        f"{base}/wrong-type/1.jpg": None,  # served as text/html: the bytes decide
        f"{base}/throttled/2.jpg": None,  # 429 with Retry-After, then the image
        f"{base}/flaky/3.jpg": None,  # 500, then the image
        f"http://{BASIC_USER}:{BASIC_PASSWORD}@{host}/auth/5.jpg": None,
        f"{base}/img/6.jpg?X-Amz-Signature={SECRETS[0]}&token={SECRETS[1]}": None,
        f"{base}/missing": "not_found",
        f"{base}/gone": "not_found",
        f"{base}/error": "http_error",
        f"{base}/slow/4.jpg": "timeout",
        f"{base}/loop/0": "redirect_loop",
        f"{base}/big": "too_large",
        f"{base}/big-chunked": "too_large",
        f"{base}/to-metadata": "address_not_allowed",
        "http://169.254.169.254/latest/meta-data/x.jpg": "address_not_allowed",
        f"{base}/to-file": "scheme_not_allowed",
        f"file://{local}": "scheme_not_allowed",
        "ftp://example.com/x.jpg": "unsupported_scheme",
        f"http://{BASIC_USER}:{BASIC_PASSWORD}@{host}/missing?sig={SECRETS[0]}": "not_found",
        str(local): None,  # local paths beside URLs, as before
    }
    manifest = tmp_path / "urls.parquet"  # with a column carried to every row, failed or not
    skus = pa.array(range(100, 100 + len(expected)), pa.int32())
    pq.write_table(pa.table({"uri": list(expected), "sku": skus}), manifest)
    config = make_config(manifest, **FAST_HTTP, **SMALL, input__passthrough_columns="[sku]")
    result = subprocess.run(
        _command(config, tmp_path), capture_output=True, text=True, timeout=600, env=_job_env(), check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(config.output.uri)
    table = pq.read_table(out / "data")
    assert table.num_rows == len(expected)
    assert len(set(table.column("row_id").to_pylist())) == len(expected)
    rows = rows_by_uri(out)
    by_given = {uri: rows[redaction.redact_url(uri)] for uri in expected}
    assert {uri: row["reason"] for uri, row in by_given.items()} == expected
    assert table.schema.field("sku").type == pa.int32()
    for sku, (uri, row) in enumerate(by_given.items(), start=100):
        assert row["sku"] == sku
        assert row["row_id"] == row_ids.row_id(uri)  # from the URL as given, secrets and all
        assert (row["status"] == "ok") is (expected[uri] is None)
    assert by_given[f"{base}/error"]["error"] == "HTTP 500 after 2 attempts"
    assert rows[f"{base}/img/0.jpg"]["uri"] == f"{base}/img/0.jpg"  # a plain URL is kept as given
    reasons = Counter(reason for reason in expected.values() if reason is not None)
    manifest_json = json.loads((out / "_SUCCESS").read_text())
    assert manifest_json["counts"]["failed"] == reasons.total()
    assert manifest_json["failed_by_reason"] == dict(reasons)
    assert all(reason in result.stdout for reason in reasons)  # the run summary names each
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
        for path in out.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    assert image_server.attempts["/throttled/2.jpg"] == image_server.attempts["/flaky/3.jpg"] == 2


def test_a_thousand_urls_with_transient_failures_commit_exactly_once(
    ray_session, image_server, make_config, tmp_path, reliability
):
    """10% of the URLs fail on their first try (429 or 503): all are classified after a retry."""
    urls = []
    for index in range(1000):
        kind = {0: "throttled", 10: "unavailable"}.get(index % 20, "img")  # 50 + 50
        urls.append(f"{image_server.url}/{kind}/{index}.jpg")
    transient = [url for url in urls if "/img/" not in url]
    assert len(transient) == 100
    manifest = write_manifest(tmp_path / "urls.parquet", urls)
    config = make_config(manifest, **FAST_HTTP, **SMALL, output__rows_per_file=250)
    summary = run_job(config)
    table = pq.read_table(Path(config.output.uri) / "data", columns=["row_id", "uri", "status"])
    written = table.column("uri").to_pylist()
    lost, duplicated = len(set(urls) - set(written)), len(written) - len(set(written))
    reliability.append(
        {
            "scenario": "1000 URLs, 10% transient HTTP",
            "faults": 100,
            "rows_lost": lost,
            "rows_duplicated": duplicated,
        }
    )
    assert (lost, duplicated) == (0, 0)
    assert sorted(written) == sorted(urls)
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert (summary.inputs, summary.succeeded, summary.failed) == (1000, 1000, 0)
    assert all(image_server.attempts[url.removeprefix(image_server.url)] == 2 for url in transient)


KILL_AFTER_PARTS = 2  # committed checkpoints, of about four


def test_killed_url_run_resumes_with_every_url_once(image_server, make_config, tmp_path):
    """SIGKILL of the whole job mid-run; the rerun commits, every URL once, only the rest fetched again."""
    urls = [f"{image_server.url}/img/{index}.jpg" for index in range(240)]
    manifest = write_manifest(tmp_path / "urls.parquet", urls)
    config = make_config(  # tests/storage/test_resume.py's pace: seconds between parts, room to kill
        manifest,
        **FAST_HTTP,
        output__rows_per_file=8,
        preprocess__batch_size=4,
        preprocess__resize_size=160,
        preprocess__crop_size=160,
        inference__batch_size=4,
        inference__torch_threads=1,
        preprocess__fetch_threads=4,
    )
    command = _command(config, tmp_path)
    out = Path(config.output.uri)
    log = tmp_path / "first.log"
    with log.open("wb") as handle:
        first = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=_job_env(), start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while (
            len(committed_checkpoints(out)) < KILL_AFTER_PARTS
            and first.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert first.poll() is None, f"the run ended before it could be killed: {log.read_text()[-3000:]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
        first.wait(timeout=60)
    assert not (out / "_SUCCESS").exists()
    fetched_before = len(image_server.requests)

    second = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_job_env(), check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    committed = json.loads((out / "_SUCCESS").read_text())
    assert committed["resumed"] is True
    assert committed["counts"] == {"inputs": 240, "succeeded": 240, "failed": 0}
    assert 0 < committed["processed_this_run"] < 240
    table = pq.read_table(out / "data", columns=["row_id", "uri"])
    assert sorted(table.column("uri").to_pylist()) == sorted(urls)
    assert len(set(table.column("row_id").to_pylist())) == 240
    assert len(image_server.requests) - fetched_before < 240  # finished URLs were not fetched again
