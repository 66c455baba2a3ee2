"""pipeline.ops.metrics: worker-side Ray metrics and the driver's pushed job metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
from helpers import free_port
from monitoring_parts import http_get
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from pipeline.ops.metrics import (
    ETA_UNKNOWN,
    JOB_PHASES,
    PUSH_JOB_NAME,
    STAGE_DECODE,
    STAGE_INFERENCE,
    JobMetrics,
    WorkerMetrics,
    worker_metrics,
)
from pipeline.schema import FailureReason

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class RecordingMetric:
    """Stands in for a ray.util.metrics object and keeps what was recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert value > 0, "Ray rejects increments <= 0"
        self.calls.append((value, tags or {}))

    observe = set = inc

    def totals(self, *keys: str) -> dict[tuple[str, ...], float]:
        """Sum of recorded values by the given tag keys."""
        out: dict[tuple[str, ...], float] = {}
        for value, tags in self.calls:
            key = tuple(tags[k] for k in keys)
            out[key] = out.get(key, 0) + value
        return out


def recording_worker_metrics() -> WorkerMetrics:
    names = (
        "rows",
        "failures",
        "stage_seconds",
        "batch_size",
        "model_load_seconds",
        "gpu_utilization",
        "gpu_memory_used",
    )
    return WorkerMetrics(tags={"pipeline": "p", "run_id": "r"}, **{name: RecordingMetric() for name in names})  # type: ignore[arg-type]


class TestWorkerMetrics:
    def test_failures_are_counted_once_by_the_stage_that_caused_them(self) -> None:
        """A decode failure passing through inference is a failed row out of both stages, but one failure."""
        metrics = recording_worker_metrics()
        metrics.count_rows(STAGE_DECODE, 20, 1)
        metrics.count_failures(STAGE_DECODE, {FailureReason.EMPTY_FILE: 1})
        metrics.count_rows(STAGE_INFERENCE, 19, 2)
        metrics.count_failures(STAGE_INFERENCE, {FailureReason.MODEL_ERROR: 1})
        rows: Any = metrics.rows
        failures: Any = metrics.failures
        assert rows.totals("stage", "outcome") == {
            ("decode", "ok"): 20,
            ("decode", "failed"): 1,
            ("inference", "ok"): 19,
            ("inference", "failed"): 2,
        }
        assert failures.totals("stage", "reason") == {
            ("decode", "empty_file"): 1,
            ("inference", "model_error"): 1,
        }

    def test_zero_counts_are_not_recorded(self) -> None:
        """An all-ok or empty batch records no zero increments, which Ray would reject."""
        metrics = recording_worker_metrics()
        metrics.count_rows(STAGE_DECODE, 0, 0)
        metrics.count_failures(STAGE_DECODE, {FailureReason.TRUNCATED: 0})
        assert metrics.rows.calls == [] == metrics.failures.calls  # type: ignore[attr-defined]

    def test_an_unknown_gpu_figure_is_not_exported(self) -> None:
        """No NVML: the utilisation gauge is never set (an absent series, not a fake 0); memory still is."""
        metrics = recording_worker_metrics()
        metrics.observe_gpu(None, 3 * 2**30)
        metrics.observe_gpu(0.75, None)
        utilization: Any = metrics.gpu_utilization
        memory: Any = metrics.gpu_memory_used
        assert [value for value, _ in utilization.calls] == [0.75]
        assert [value for value, _ in memory.calls] == [3 * 2**30]

    def test_jpegs_that_fail_in_the_actor_are_counted_as_decode_failures(self) -> None:
        """decode_device gpu: a JPEG the inference actor cannot decode is in pipeline_failures, once."""
        import numpy as np

        from pipeline.cli import samples
        from pipeline.compute.decode import DecodeSettings
        from pipeline.compute.inference import InferenceSettings
        from pipeline.compute.inference_actor import ActorSettings, ClassifyOrEmbed
        from pipeline.compute.model import ModelSpec, Preprocessing
        from pipeline.ops.metrics import RunLabels
        from pipeline.schema import BYTES_COLUMN, ENCODING_COLUMN, ENCODING_JPEG

        prep = Preprocessing(72, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
        labels = tuple(map(str, range(10)))
        spec = ModelSpec("resnet18", 10, None, "random-init", True, labels, prep)  # noqa: FBT003
        on_device = DecodeSettings(72, 64, "bilinear", 89_478_485, reduced_decode=False, keep_jpeg=True)
        settings = InferenceSettings(device="cpu", precision="fp32", batch_size=4)
        actor = ActorSettings(settings, 1, RunLabels("p", "r"), device_decode=on_device)
        classify = ClassifyOrEmbed(spec, None, actor)
        classify.metrics = recording_worker_metrics()
        good = samples.jpeg_bytes(samples.photo_like(np.random.default_rng(1), 120, 90))
        blobs = [good, good[:1500], good]
        table = classify(
            {
                "row_id": np.array(["a", "b", "c"], dtype=object),
                "uri": np.array(["a.jpg", "b.jpg", "c.jpg"], dtype=object),
                BYTES_COLUMN: np.array(blobs, dtype=object),
                ENCODING_COLUMN: np.array([ENCODING_JPEG] * 3, dtype=object),
                "status": np.array(["ok"] * 3, dtype=object),
                "reason": np.array([None] * 3, dtype=object),
                "error": np.array([None] * 3, dtype=object),
            }
        )
        assert table.column("reason").to_pylist() == [None, "truncated", None]
        failures: Any = classify.metrics.failures
        rows: Any = classify.metrics.rows
        assert failures.totals("stage", "reason") == {("decode", "truncated"): 1}
        assert rows.totals("stage", "outcome") == {("inference", "ok"): 2, ("inference", "failed"): 1}

    def test_ray_metric_names_and_labels(self) -> None:
        """The Ray metrics are named as docs/observability.md says and carry the pipeline and run id."""
        metrics = worker_metrics("names-test", "run-1")
        info = {
            metric.info["name"]: metric.info
            for metric in (
                metrics.rows,
                metrics.failures,
                metrics.stage_seconds,
                metrics.batch_size,
                metrics.model_load_seconds,
                metrics.gpu_utilization,
                metrics.gpu_memory_used,
            )
        }
        assert set(info) == {
            "pipeline_rows",
            "pipeline_failures",
            "pipeline_stage_batch_seconds",
            "pipeline_batch_size_rows",
            "pipeline_model_load_seconds",
            "pipeline_gpu_utilization_ratio",
            "pipeline_gpu_memory_used_bytes",
        }
        for name, item in info.items():
            assert item["default_tags"] == {"pipeline": "names-test", "run_id": "run-1"}, name
            assert {"pipeline", "run_id"} <= set(item["tag_keys"]), name


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


class TestJobMetrics:
    def test_start_records_identity_size_and_running(self) -> None:
        """start() sets info, total, zero progress, unknown ETA and status running."""
        metrics = JobMetrics("p", "r1")
        metrics.start("resnet50", "0.1.0", 100)
        reg = metrics.registry
        assert sample(reg, "pipeline_job_info", run_id="r1", model="resnet50", version="0.1.0") == 1
        assert sample(reg, "pipeline_job_progress_rows_expected", run_id="r1") == 100
        assert sample(reg, "pipeline_job_progress_rows_done", run_id="r1") == 0
        assert sample(reg, "pipeline_job_eta_seconds", run_id="r1") == ETA_UNKNOWN
        assert sample(reg, "pipeline_job_status", run_id="r1", status="running") == 1
        assert sample(reg, "pipeline_job_status", run_id="r1", status="failed") == 0
        assert abs(sample(reg, "pipeline_job_start_timestamp_seconds", run_id="r1") - time.time()) < 60  # type: ignore[operator]

    def test_progress_sets_rate_and_eta(self) -> None:
        """progress() sets done, rate and an ETA from the remaining rows at that rate."""
        metrics = JobMetrics("p", "r1")
        metrics.progress(done=40, total=100, rate=4.0, elapsed=10.0)
        reg = metrics.registry
        assert sample(reg, "pipeline_job_progress_rows_done", run_id="r1") == 40
        assert sample(reg, "pipeline_job_throughput_images_per_second", run_id="r1") == 4.0
        assert sample(reg, "pipeline_job_eta_seconds", run_id="r1") == 15.0
        metrics.progress(done=0, total=100, rate=0.0, elapsed=12.0)
        assert sample(reg, "pipeline_job_eta_seconds", run_id="r1") == ETA_UNKNOWN

    def test_finish_success_records_outcome_and_last_success(self) -> None:
        """finish() of a committed run sets rows by outcome and reason, status succeeded and last success."""
        metrics = JobMetrics("p", "r1")
        metrics.start("m", "v", 10)
        metrics.finish(succeeded=True, inputs=10, ok=8, failed_by_reason={"truncated": 2}, seconds=5.0)
        reg = metrics.registry
        assert [
            sample(reg, "pipeline_job_rows", run_id="r1", outcome=o) for o in ("input", "ok", "failed")
        ] == [10, 8, 2]
        assert sample(reg, "pipeline_job_failed_rows", run_id="r1", reason="truncated") == 2
        assert sample(reg, "pipeline_job_failed_rows", run_id="r1", reason="model_error") == 0
        assert sample(reg, "pipeline_job_progress_rows_done", run_id="r1") == 10
        assert sample(reg, "pipeline_job_status", run_id="r1", status="succeeded") == 1
        assert sample(reg, "pipeline_job_eta_seconds", run_id="r1") == 0
        last = metrics.success_registry.get_sample_value("pipeline_job_last_success_timestamp_seconds")
        assert last is not None
        assert abs(last - time.time()) < 60

    def test_failed_run_keeps_its_progress_and_no_last_success(self) -> None:
        """A run failing before its output is tallied keeps its last progress and sets no last success."""
        metrics = JobMetrics("p", "r1")
        metrics.start("m", "v", 10)
        metrics.progress(done=6, total=10, rate=1.0, elapsed=6.0)
        metrics.finish(succeeded=False, inputs=10, ok=0, failed_by_reason={}, seconds=7.0)
        reg = metrics.registry
        assert sample(reg, "pipeline_job_progress_rows_done", run_id="r1") == 6
        assert sample(reg, "pipeline_job_status", run_id="r1", status="failed") == 1
        assert sample(reg, "pipeline_job_eta_seconds", run_id="r1") == ETA_UNKNOWN
        # never set (the gauge's initial 0); it is pushed only after a success (TestPushgateway)
        assert metrics.success_registry.get_sample_value("pipeline_job_last_success_timestamp_seconds") == 0

    def test_phase_is_one_for_the_current_phase_and_zero_for_the_others(self) -> None:
        """set_phase() marks one named phase 1 and every other 0; start() keeps it and gives each a sample."""
        assert JOB_PHASES == (  # the deploy engineer's alerts select on exactly these values
            "listing_inputs",
            "loading_model",
            "starting_ray",
            "restoring_checkpoint",
            "waiting_for_gpu_workers",
            "starting_workers",
            "writing",
            "verifying",
            "committing",
            "stopping",
        )
        metrics = JobMetrics("p", "r1")
        metrics.set_phase("listing_inputs")
        metrics.start("m", "v", 10)
        metrics.set_phase("waiting_for_gpu_workers")
        reg = metrics.registry
        phases = {name: sample(reg, "pipeline_job_phase", run_id="r1", phase=name) for name in JOB_PHASES}
        assert phases == {name: float(name == "waiting_for_gpu_workers") for name in JOB_PHASES}

    def test_unreachable_pushgateway_never_fails_the_job(self) -> None:
        """Push errors are counted and logged once per ten, never raised."""
        metrics = JobMetrics("p", "r1", pushgateway_url=f"http://127.0.0.1:{free_port()}", push_interval_s=0)
        with capture_logs() as logs:
            metrics.start("m", "v", 10)
            for done in range(1, 11):
                metrics.progress(done=done, total=10, rate=1.0, elapsed=float(done))
            metrics.finish(succeeded=True, inputs=10, ok=10, failed_by_reason={}, seconds=10.0)
        assert metrics.push_failures == 12
        warnings = [log for log in logs if log["event"] == "pushgateway push failed"]
        assert [w["failures"] for w in warnings] == [1, 11]
        assert all(w["run_id"] == "r1" and w["stage"] == "metrics" for w in warnings)


def pushed(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The Pushgateway's /metrics, as {name: {sorted labels: value}} for the batch-inference job."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(http_get(f"{url}/metrics").decode()):
        for s in family.samples:
            if s.labels.get("job") == PUSH_JOB_NAME:
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("job", "instance")))
                out.setdefault(s.name, {})[labels] = s.value
    return out


@pytest.mark.slow
class TestPushgateway:
    def test_failed_run_after_a_success_keeps_the_last_success(self, pushgateway: str) -> None:
        """Push-add: a failed run replaces the previous run's series but keeps the last-success timestamp."""
        first = JobMetrics("nightly", "run-1", pushgateway_url=pushgateway)
        first.start("m", "v", 5)
        first.finish(succeeded=True, inputs=5, ok=4, failed_by_reason={"truncated": 1}, seconds=3.0)
        after_first = pushed(pushgateway)
        (success_time,) = after_first["pipeline_job_last_success_timestamp_seconds"].values()
        assert (
            after_first["pipeline_job_rows"][
                (("outcome", "ok"), ("pipeline", "nightly"), ("run_id", "run-1"))
            ]
            == 4
        )

        second = JobMetrics("nightly", "run-2", pushgateway_url=pushgateway)
        second.start("m", "v", 5)
        assert (
            pushed(pushgateway)["pipeline_job_status"][
                (("pipeline", "nightly"), ("run_id", "run-2"), ("status", "running"))
            ]
            == 1
        )
        second.finish(succeeded=False, inputs=5, ok=0, failed_by_reason={}, seconds=1.0)
        after_second = pushed(pushgateway)
        assert after_second["pipeline_job_last_success_timestamp_seconds"] == {
            (("pipeline", "nightly"),): success_time
        }
        status = after_second["pipeline_job_status"]
        assert status[(("pipeline", "nightly"), ("run_id", "run-2"), ("status", "failed"))] == 1
        for name, series in after_second.items():
            assert not any(("run_id", "run-1") in labels for labels in series), f"{name} still has run-1"

    def test_a_phase_change_is_pushed_at_once(self, pushgateway: str) -> None:
        """Entering a phase pushes pipeline_job_phase now, not at the next push interval."""
        metrics = JobMetrics("phased", "run-p", pushgateway_url=pushgateway, push_interval_s=3600)
        metrics.start("m", "v", 5)
        metrics.set_phase("waiting_for_gpu_workers")
        phase = pushed(pushgateway)["pipeline_job_phase"]
        current = {dict(labels)["phase"] for labels, value in phase.items() if value == 1}
        assert current == {"waiting_for_gpu_workers"}
        assert len(phase) == len(JOB_PHASES)

    def test_pipelines_are_grouped_apart(self, pushgateway: str) -> None:
        """Two pipelines push to their own groups: one's run does not replace the other's."""
        for name in ("alpha", "beta"):
            metrics = JobMetrics(name, f"{name}-run", pushgateway_url=pushgateway)
            metrics.start("m", "v", 1)
            metrics.finish(succeeded=True, inputs=1, ok=1, failed_by_reason={}, seconds=1.0)
        last = pushed(pushgateway)["pipeline_job_last_success_timestamp_seconds"]
        assert set(last) == {(("pipeline", "alpha"),), (("pipeline", "beta"),)}


def test_a_models_run_counts_each_input_once_and_each_model_by_name() -> None:
    """models: stage "inference" counts each input once, stage "model" each model's rows by output name."""
    import numpy as np

    from pipeline.compute.inference import InferenceSettings
    from pipeline.compute.inference_actor import ActorSettings
    from pipeline.compute.model import ModelSpec, Preprocessing
    from pipeline.compute.multi_actor import ClassifyOrEmbedMany, ModelPart
    from pipeline.compute.shared_decode import Derivation
    from pipeline.ops.metrics import RunLabels
    from pipeline.schema import IMAGE_COLUMN, model_table, output_schema

    prep = Preprocessing(36, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
    spec = ModelSpec("resnet18", 10, None, "random-init", True, tuple(map(str, range(10))), prep)  # noqa: FBT003
    settings = ActorSettings(
        InferenceSettings(device="cpu", precision="fp32", batch_size=4), 3, RunLabels("p", "r")
    )
    parts = tuple(
        ModelPart(name, spec, settings, Derivation(32, size, "bilinear"))
        for name, size in (("a", 32), ("b", 16))
    )
    actor = ClassifyOrEmbedMany(parts, (None, None), ("resnet18+resnet18", "digest"))
    recorded = recording_worker_metrics()
    actor.metrics = recorded
    for head in actor.heads:
        head.metrics = recorded
    table = actor(
        {
            "row_id": np.array(["x", "y", "z"], dtype=object),
            "uri": np.array(["x.jpg", "y.jpg", "z.jpg"], dtype=object),
            IMAGE_COLUMN: np.zeros((3, 32, 32, 3), np.uint8),
            "status": np.array(["ok", "failed", "ok"], dtype=object),
            "reason": np.array([None, "truncated", None], dtype=object),
            "error": np.array([None, "cut", None], dtype=object),
        }
    )
    rows: Any = recorded.rows
    assert rows.totals("stage", "model", "outcome") == {
        ("inference", "", "ok"): 2,
        ("inference", "", "failed"): 1,
        ("model", "a", "ok"): 2,
        ("model", "a", "failed"): 1,
        ("model", "b", "ok"): 2,
        ("model", "b", "failed"): 1,
    }
    batches: Any = recorded.batch_size
    assert batches.totals("stage", "model") == {("model", "a"): 2, ("model", "b"): 2, ("inference", ""): 2}
    assert model_table(table, "b").schema == output_schema()  # each model's part: its own columns only
