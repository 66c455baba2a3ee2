"""The job on a real Ray head node, watched by a real Prometheus and Pushgateway.

One run per module: ``pipeline run`` as a subprocess (JSON logs, a secret in its
environment) against ``ray start --head --metrics-export-port``, pushing to a
Pushgateway; Prometheus scrapes both every second and evaluates the alert rules.
Then every dashboard query is evaluated through Prometheus's HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from monitoring_parts import (
    ALERTS_DIR,
    GRAFANA_DIR,
    Prometheus,
    dashboard_targets,
    prometheus_server,
    pushgateway_server,
    ray_head_server,
    render_query,
    running,
)

from pipeline.cli import samples

pytestmark = pytest.mark.slow

DASHBOARD = json.loads((GRAFANA_DIR / "batch-inference-job.json").read_text(encoding="utf-8"))
RULE_FILE = ALERTS_DIR / "pipeline.rules.yaml"
PIPELINE = "observed"
SECRET = "obsTestSecret-7f3a9c2e41"  # noqa: S105  # a fake credential the logs must never show
#: Panels whose series only exist on a machine with a GPU: their queries are checked to be
#: valid PromQL that Prometheus accepts, and to return data only where a GPU exists.
GPU_ONLY_PANELS = frozenset({"GPU utilisation", "GPU memory"})
ALL_TARGETS = dashboard_targets(DASHBOARD)
CONSOLE_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[(debug|info|warning|error)")


@dataclass
class ObservedRun:
    """What one observed run left behind."""

    prometheus: Prometheus
    summary: dict[str, Any]
    stdout: str
    stderr: str
    started: float

    def window(self) -> str:
        """A duration from before the run started until now: the dashboard's time range."""
        return f"{math.ceil(time.time() - self.started) + 10}s"

    def variables(self) -> dict[str, str]:
        """Grafana's variables with this run's values and concrete durations (1 s scrapes)."""
        return {
            "pipeline": PIPELINE,
            "run_id": self.summary["run_id"],
            "session": session_of(self.prometheus, self.summary["run_id"]),
            "__rate_interval": "4s",  # Grafana: max(interval + scrape interval, 4 x scrape interval)
            "__interval": "1s",
            "__range": self.window(),
            "datasource": "",
        }

    def over_the_run(self, expr: str) -> list[dict[str, Any]]:
        """A panel query as its graph shows it: every series it had at any time of the run.

        An instant query through /api/v1/query of ``max_over_time((<panel query>)[<range>:1s])``,
        so gauges that Ray stops exporting once a dataset or worker is gone (Ray ages gauges
        out after two report intervals) still count, as they do on the dashboard's time range.
        """
        return self.prometheus.query(
            f"max_over_time(({render_query(expr, self.variables())})[{self.window()}:1s])"
        )


def session_of(prometheus: Prometheus, run_id: str) -> str:
    """``$session`` as Grafana resolves it: label_values(ray_pipeline_run_info{...}, SessionName)."""
    match = f'ray_pipeline_run_info{{pipeline="{PIPELINE}", run_id="{run_id}"}}'
    values = prometheus.api("label/SessionName/values", **{"match[]": match})
    assert len(values) == 1, f"expected one Ray session for the run, got {values}"
    return str(values[0])


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def _total(result: list[dict[str, Any]]) -> float:
    return sum(_value(sample) for sample in result)


@pytest.fixture(scope="module")
def observed_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedRun]:
    """Run the job once under Prometheus; every server is stopped at the end, whatever happened."""
    workdir = tmp_path_factory.mktemp("observed")
    images = workdir / "images"
    samples.make_images(images, 20, seed=5)  # 20 good images and 3 broken files
    pushgateway = pushgateway_server(workdir)
    head, ray_address, metrics_port = ray_head_server(workdir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(running(pushgateway))
        stack.enter_context(running(head, timeout=120))
        gateway = pushgateway.ready_url.removesuffix("/-/ready")
        prometheus = prometheus_server(
            workdir,
            {
                "ray": (f"127.0.0.1:{metrics_port}", False),
                "pushgateway": (gateway.removeprefix("http://"), True),
            },
            [RULE_FILE],
        )
        stack.enter_context(running(prometheus.server))
        config = {
            "job": {"name": PIPELINE},
            "input": {"uri": str(images)},
            # the 3 broken files (13%) are what the failure metrics count, not a reason to refuse
            "output": {"uri": str(workdir / "out"), "max_failure_fraction": 1.0},
            # predictions are not the point here: random weights, a small model
            "model": {"name": "mobilenet_v3_small", "random_init": True},
            "inference": {"precision": "fp32"},
            "resources": {"ray_address": ray_address},
            "logging": {"format": "json", "progress": "off"},
            "metrics": {"pushgateway_url": gateway, "push_interval_s": 1},
        }
        config_file = workdir / "config.yaml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        summary_file = workdir / "summary.json"
        env = {
            **head.env,  # type: ignore[dict-item]  # ray_head_server always sets env
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "PYTHONUNBUFFERED": "1",
        }
        started = time.time()
        process = subprocess.run(  # fixed argument list
            [
                sys.executable,
                "-m",
                "pipeline",
                "run",
                "-c",
                str(config_file),
                "--summary-json",
                str(summary_file),
            ],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert process.returncode == 0, f"pipeline run failed:\n{process.stderr[-4000:]}"
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        run = summary["run_id"]
        prometheus.wait_for(f'pipeline_job_status{{run_id="{run}", status="succeeded"}} == 1')
        prometheus.wait_for(
            f'sum(ray_pipeline_rows_total{{run_id="{run}", stage="inference"}})',
            predicate=lambda result: bool(result) and _total(result) == summary["inputs"],
        )
        prometheus.wait_for(f'ALERTS{{alertname="PipelineFailureRateHigh", run_id="{run}"}}')
        observed = ObservedRun(prometheus, summary, process.stdout, process.stderr, started)
        wait_for_panels(observed)
        yield observed


def wait_for_panels(observed: ObservedRun, timeout: float = 60.0) -> None:
    """Give Ray's metric reporting (every few seconds, Ray Data's last update at shutdown) time to land.

    Returns when every non-GPU panel query has data or after ``timeout``; the tests then
    report each query that still has none.
    """
    pending = [expr for title, _, expr in ALL_TARGETS if title not in GPU_ONLY_PANELS]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [expr for expr in pending if not observed.over_the_run(expr)]
        if pending:
            time.sleep(0.5)


class TestTheRun:
    def test_run_has_failures_to_show(self, observed_run: ObservedRun) -> None:
        """The observed run committed 20 good rows and 3 broken files, so failure panels have data."""
        assert observed_run.summary["status"] == "succeeded"
        assert observed_run.summary["succeeded"] == 20
        assert observed_run.summary["failed"] == 3


class TestPushedJobMetrics:
    def test_rows_by_outcome_equal_the_summary(self, observed_run: ObservedRun) -> None:
        """pipeline_job_rows and _failed_rows scraped from the Pushgateway equal the run summary."""
        summary, prometheus = observed_run.summary, observed_run.prometheus
        selector = f'job="batch-inference", pipeline="{PIPELINE}", run_id="{summary["run_id"]}"'
        rows = {
            s["metric"]["outcome"]: _value(s) for s in prometheus.query(f"pipeline_job_rows{{{selector}}}")
        }
        assert rows == {"input": summary["inputs"], "ok": summary["succeeded"], "failed": summary["failed"]}
        failed = {
            s["metric"]["reason"]: _value(s)
            for s in prometheus.query(f"pipeline_job_failed_rows{{{selector}}} > 0")
        }
        assert failed == summary["failed_by_reason"]

    def test_last_success_is_recent(self, observed_run: ObservedRun) -> None:
        """The last-success timestamp was pushed at the end of this successful run."""
        (sample,) = observed_run.prometheus.query(
            f'pipeline_job_last_success_timestamp_seconds{{job="batch-inference", pipeline="{PIPELINE}"}}'
        )
        assert observed_run.started < _value(sample) <= time.time()


class TestWorkerMetrics:
    def test_worker_counters_equal_the_summary(self, observed_run: ObservedRun) -> None:
        """Rows out of the last stage, and failures counted once by reason, equal the run summary."""
        summary, prometheus = observed_run.summary, observed_run.prometheus
        run = f'run_id="{summary["run_id"]}"'
        rows = prometheus.query(f'sum by (outcome) (ray_pipeline_rows_total{{{run}, stage="inference"}})')
        assert {s["metric"]["outcome"]: _value(s) for s in rows} == {
            "ok": summary["succeeded"],
            "failed": summary["failed"],
        }
        failures = prometheus.query(f"sum by (reason) (ray_pipeline_failures_total{{{run}}})")
        assert {s["metric"]["reason"]: _value(s) for s in failures} == summary["failed_by_reason"]


class TestDashboard:
    def test_variables_resolve_to_the_run(self, observed_run: ObservedRun) -> None:
        """$pipeline and $run_id list the run (from the pushed series), $session its Ray session."""
        prometheus = observed_run.prometheus
        queries = {
            v["name"]: v["query"]["query"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"
        }
        assert set(queries) == {"pipeline", "run_id", "session"}
        variables = observed_run.variables()
        for name, query in queries.items():
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
            assert match, query
            selector, label = render_query(match.group(1), variables), match.group(2)
            values = prometheus.api(f"label/{label}/values", **{"match[]": selector})
            assert variables[name] in values, (name, values)

    @pytest.mark.parametrize(
        ("title", "ref", "expr"),
        [target for target in ALL_TARGETS if target[0] not in GPU_ONLY_PANELS],
        ids=[f"{t[0]}/{t[1]}" for t in ALL_TARGETS if t[0] not in GPU_ONLY_PANELS],
    )
    def test_panel_query_returns_data(
        self, observed_run: ObservedRun, title: str, ref: str, expr: str
    ) -> None:
        """The panel's query, with the run's variables, is valid now and had finite data during the run."""
        query = render_query(expr, observed_run.variables())
        observed_run.prometheus.query(query)  # fails the test on a PromQL error
        result = observed_run.over_the_run(expr)
        assert result, f"{title}/{ref} had no data during the run: {query}"
        assert any(math.isfinite(_value(sample)) for sample in result), (
            f"{title}/{ref}: only NaN/Inf: {result}"
        )

    @pytest.mark.parametrize(
        ("title", "ref", "expr"),
        [target for target in ALL_TARGETS if target[0] in GPU_ONLY_PANELS],
        ids=[f"{t[0]}/{t[1]}" for t in ALL_TARGETS if t[0] in GPU_ONLY_PANELS],
    )
    def test_gpu_panel_query_is_valid(
        self, observed_run: ObservedRun, title: str, ref: str, expr: str
    ) -> None:
        """GPU-only queries are accepted by Prometheus; they have data only where the job ran on a GPU."""
        import torch

        query = render_query(expr, observed_run.variables())
        observed_run.prometheus.query(query)  # fails the test on a PromQL error
        result = observed_run.over_the_run(expr)
        if torch.cuda.is_available():
            assert result, f"{title}/{ref} had no data on a GPU machine: {query}"
        else:
            assert result == [], f"{title}/{ref} has data without a GPU: {result}"

    def test_gpu_only_panels_exist(self) -> None:
        """Every panel listed as GPU-only is in the dashboard, so the list cannot hide a renamed panel."""
        titles = {title for title, _, _ in ALL_TARGETS}
        assert titles >= GPU_ONLY_PANELS


class TestAlertRulesInPrometheus:
    def test_rules_load_and_evaluate_healthy(self, observed_run: ObservedRun) -> None:
        """Prometheus loaded every alert of the rule file, and each evaluates without error."""
        expected = {
            rule["alert"]
            for group in yaml.safe_load(RULE_FILE.read_text(encoding="utf-8"))["groups"]
            for rule in group["rules"]
        }
        groups = observed_run.prometheus.api("rules", type="alert")["groups"]
        loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert set(loaded) == expected
        for name, rule in loaded.items():
            assert rule["health"] == "ok", (name, rule.get("lastError"))

    def test_failure_rate_alert_sees_the_broken_files(self, observed_run: ObservedRun) -> None:
        """3 of 23 rows failed (13%): PipelineFailureRateHigh is pending for the run; no PipelineJobFailed."""
        alerts = observed_run.prometheus.api("alerts")["alerts"]
        run = observed_run.summary["run_id"]
        states = {(a["labels"]["alertname"], a["labels"].get("run_id")): a["state"] for a in alerts}
        assert states.get(("PipelineFailureRateHigh", run)) == "pending"
        assert not any(name == "PipelineJobFailed" for name, _ in states)


class TestRunLogs:
    def test_structlog_lines_are_json_with_run_id_and_stage(self, observed_run: ObservedRun) -> None:
        """With logging.format json, every pipeline log line is a JSON object carrying run_id and stage."""
        lines = [line for line in observed_run.stderr.splitlines() if line.startswith("{")]
        events = [json.loads(line) for line in lines]
        assert {"run starting", "resource plan", "run finished"} <= {event["event"] for event in events}
        for event in events:
            assert event["run_id"] == observed_run.summary["run_id"], event
            assert event["stage"], event
        assert not [line for line in observed_run.stderr.splitlines() if CONSOLE_LINE.match(line)]

    def test_secret_from_environment_never_printed(self, observed_run: ObservedRun) -> None:
        """AWS_SECRET_ACCESS_KEY from the job's environment appears in neither stdout nor stderr."""
        assert SECRET not in observed_run.stdout
        assert SECRET not in observed_run.stderr
