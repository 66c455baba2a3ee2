"""The pipeline command: run, plan, demo, config, models, bench, inspect, compare, report.

Every exit code is in :data:`pipeline.errors.EXIT_CODES` (``--help`` ends with them). An
error the pipeline did not foresee ends as one line naming it and the file holding its
traceback (:func:`pipeline.ops.logs.save_traceback`), never as a traceback on the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import textwrap
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, get_args

from pipeline._version import __version__
from pipeline.cli import review_commands
from pipeline.cli.demo import demo_arguments
from pipeline.config.sections import ModelSource
from pipeline.errors import EXIT_CODES, ConfigError, PipelineError, RunInterrupted, UnexpectedError
from pipeline.ops import logrelay, logs
from pipeline.run import group_sizing, stopping

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.config import Config


def _add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config file (optional: every key can come from --set)")
    _add_overrides(parser, "output.uri=s3://bucket/run")


def _exit_codes_text() -> str:
    """``--help``'s list of exit codes, from :data:`~pipeline.errors.EXIT_CODES` (Markdown quotes dropped)."""
    lines = ["exit codes:"]
    for code, meaning in EXIT_CODES.items():
        wrapped = textwrap.wrap(re.sub(r"`([^`]*)`", r"\1", meaning), width=92)
        lines += [f"  {code:>3}  {wrapped[0]}", *(f"       {line}" for line in wrapped[1:])]
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's help ends with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default in (None, False, [], "==SUPPRESS==")
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    exit_codes = _exit_codes_text()
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description=__doc__.splitlines()[0],
        epilog=exit_codes,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=f"{summary[:1].upper()}{summary[1:]}.",
            epilog=f"example:\n  {example}\n\n{exit_codes}",
            formatter_class=_HelpFormatter,
        )

    run = command(
        "run",
        "run a batch-inference job: list, classify, write Parquet, commit",
        "pipeline run --config job.yaml --set output.uri=s3://bucket/out/2026-12-01",
    )
    _add_config_args(run)
    run.add_argument("--run-id", help="run id (resume an unfinished run by giving its id)")
    run.add_argument("--overwrite", action="store_true", help="discard a committed or unfinished run first")
    run.add_argument(
        "--strict",
        action="store_true",
        help="exit 3 when the output is already committed, even with this configuration "
        "(output.if_committed: fail); without it such a rerun exits 0 and does nothing",
    )
    run.add_argument(
        "--summary-json",
        help="also write the run summary to this local file, failed runs included (metrics.summary_path)",
    )

    plan = command(
        "plan",
        "dry run: config, inputs found, stages and resources; sizes the chart's groups for a target",
        "pipeline plan --config job.yaml --target-images-per-hour 5000000 --from-bench bench.json",
    )
    _add_config_args(plan)
    plan.add_argument(
        "--target-images-per-hour", type=float, help="size the CPU and GPU groups for this rate"
    )
    plan.add_argument(
        "--decode-rate", type=float, help="measured decode img/s per core (from pipeline bench)"
    )
    plan.add_argument(
        "--model-rate", type=float, help="measured model img/s per GPU/actor (from pipeline bench)"
    )
    plan.add_argument("--from-bench", help="take both rates from a `pipeline bench` JSON file")
    plan.add_argument(
        "--headroom",
        type=float,
        default=group_sizing.DEFAULT_HEADROOM,
        help=f"size for the target times 1 + this fraction (default {group_sizing.DEFAULT_HEADROOM})",
    )
    plan.add_argument(
        "--cpus-per-pod",
        type=int,
        help="cores of each CPU-group pod (default: the declared decode group's, "
        f"else {group_sizing.CPU_POD_CPUS} as values.yaml)",
    )
    plan.add_argument(
        "--gpus-per-pod",
        type=int,
        help="GPUs of each GPU-group pod (default: the declared inference group's, "
        f"else {group_sizing.GPU_POD_GPUS} as values.yaml)",
    )
    plan.add_argument(
        "--json", action="store_true", help="print the plan, sizing and Helm values as one JSON document"
    )
    plan.add_argument("--show-config", action="store_true", help="also print the resolved config")

    demo = command(
        "demo",
        "make a sample data set and run the job on it locally",
        "pipeline demo --images 300 --format parquet",
    )
    demo_arguments(demo)

    config = command(
        "config", "show the resolved config or its JSON schema", "pipeline config --config job.yaml --show"
    )
    _add_config_args(config)
    config.add_argument("--show", action="store_true", help="print the resolved config as YAML")
    config.add_argument("--schema", action="store_true", help="print the config's JSON schema")

    models = command(
        "models",
        "list what each model.source offers here (or the extra that installs it)",
        "pipeline models --source timm | grep resnet",
    )
    models.add_argument("--source", choices=get_args(ModelSource), help="one source only")

    bench = command(
        "bench",
        "measure model, decode, ideal and end-to-end throughput",
        "pipeline bench --images 2048 --model resnet50 --json bench.json",
    )
    bench.add_argument("--images", type=int, default=512, help="generated JPEGs to run (default 512)")
    bench.add_argument("--model", default="resnet50", help="model.name: the architecture (random weights)")
    bench.add_argument(
        "--source",
        choices=get_args(ModelSource),
        default="torchvision",
        help="model.source (huggingface, exported: --set model.weights=... names the saved model)",
    )
    bench.add_argument(
        "--task", choices=["classify", "embed"], default=None, help="model.task (default classify)"
    )
    bench.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="inference precision"
    )
    bench.add_argument("--batch-size", type=int, default=None, help="inference batch (default: automatic)")
    bench.add_argument("--workdir", default="bench-output", help="where images and outputs go")
    bench.add_argument("--json", dest="json_path", default=None, help="write the results here")
    bench.add_argument("--naive-images", type=int, default=None, help="images for the naive baseline")
    bench.add_argument(
        "--memory-check", action="store_true", help="also run 4x images to compare peak memory"
    )
    bench.add_argument("--model-seconds", type=float, default=8.0, help="how long to time the model alone")
    _add_overrides(bench, "preprocess.batch_size=32 (the bench sets input, output and precision)")

    review_commands.add_commands(command, _add_config_args)
    return parser


def _load(args: argparse.Namespace, *, flags: dict[str, object] | None = None) -> Config:
    """The config from --config, the environment, --set, then command flags (``None``: not given).

    Local input and weights paths must exist (exit 2 before any work).
    """
    from pipeline.config import load_config
    from pipeline.config.overrides import stray_env_names
    from pipeline.storage import is_remote

    given = {key: value for key, value in (flags or {}).items() if value is not None}
    config = load_config(args.config, args.overrides, flags=given)
    for name in stray_env_names(os.environ):
        print(
            f"warning: environment variable {name} is not read: config keys are "
            "PIPELINE_<SECTION>__<KEY>, two underscores between section and key",
            file=sys.stderr,
        )
    sys.stderr.flush()
    for key, value in (("input.uri", config.input.uri), ("model.weights", config.model.weights)):
        if value and not is_remote(value) and not Path(value.removeprefix("file://")).exists():
            raise ConfigError(key, value, "no such file or directory")
    return config


def _configure_logging(config: Config, *, relay: bool = False) -> None:
    """Log as configured; with ``relay``, every stderr line too (Ray's and its workers')."""
    logs.configure(config.logging.format, config.logging.level)
    if relay:
        logrelay.install()


def _stop_cleanly_on_signals(settled: threading.Event, late: list[int]) -> None:
    """SIGINT (Ctrl-C) and SIGTERM (what Kubernetes sends first) stop the run cleanly, once.

    During the write the first signal drains it (the batches in flight are finished and
    written, at most resources.stop_grace_s: pipeline.run.stopping); elsewhere, or at a second
    signal, the run stops at once. It then counts the rows it wrote, writes its summary and
    pushes its status; further signals are ignored while it does (SIGKILL still ends it).
    Once the run has ``settled`` (committed, or failed and reporting it), a signal only goes
    into ``late``: the run finishes (summary, metrics, Ray's shutdown) with its own exit code.
    """

    def stop(signum: int, _frame: object) -> None:
        if settled.is_set():
            late.append(signum)
            return
        if stopping.note(signum):  # the write drains, then raises RunInterrupted itself
            return
        for name in (signal.SIGINT, signal.SIGTERM):
            signal.signal(name, signal.SIG_IGN)
        raise RunInterrupted(signum)

    for name in (signal.SIGINT, signal.SIGTERM):
        signal.signal(name, stop)


def cmd_run(args: argparse.Namespace) -> int:
    """``pipeline run``."""
    from pipeline.run.job import run_job

    strict = "fail" if args.strict else None
    flags = {
        "job.run_id": args.run_id,
        "output.if_committed": strict,
        "metrics.summary_path": args.summary_json,
    }
    config = _load(args, flags=flags)
    _configure_logging(config, relay=True)
    settled, late = threading.Event(), list[int]()
    _stop_cleanly_on_signals(settled, late)
    summary = run_job(config, overwrite=args.overwrite, settled=settled)
    print(summary.render())
    for signum in late:
        logs.get_logger(run_id=summary.run_id, stage="driver").warning(
            f"{signal.Signals(signum).name} came after the commit: the run succeeded, exit 0"
        )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """``pipeline config``."""
    from pipeline.config import Config, dump_yaml

    if args.schema:
        print(json.dumps(Config.model_json_schema(), indent=2))
        return 0
    if args.config is None and not args.overrides:
        raise ConfigError(
            "--config", None, "pipeline config needs --config FILE, --set KEY=VALUE or --schema"
        )
    config = _load(args)
    print(dump_yaml(config), end="")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``pipeline models``: per model.source, what it offers here, or the extra that installs it."""
    from pipeline.compute import sources

    for name in [args.source] if args.source else list(sources.SOURCES):
        missing = sources.missing_library(name)
        if missing is not None:
            print(f"{name}: {missing}")
            continue
        offered = sources.source_module(name).offers()
        print(f"{name} ({len(offered)})")
        print("\n".join(f"  {item}" for item in offered))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """``pipeline plan``: run's own checks first (same exit codes), then what the run will do and how."""
    from pipeline.cli.plan import print_plan
    from pipeline.run.preflight import check_run

    group_sizing.check_headroom(args.headroom)
    for flag in ("target-images-per-hour", "decode-rate", "model-rate", "cpus-per-pod", "gpus-per-pod"):
        group_sizing.check_positive(f"--{flag}", getattr(args, flag.replace("-", "_")))
    config = _load(args)
    _configure_logging(config)
    verdict = check_run(config)
    sized = None
    if args.target_images_per_hour is not None:
        decode, model = group_sizing.resolve_rates(
            config, decode_rate=args.decode_rate, model_rate=args.model_rate, bench_path=args.from_bench
        )
        sized = group_sizing.size_cluster(
            config,
            args.target_images_per_hour,
            args.headroom,
            decode,
            model,
            group_sizing.pod_shape(config, cpus=args.cpus_per_pod, gpus=args.gpus_per_pod),
        )
    print_plan(config, sized=sized, as_json=args.json, verdict=verdict, show_config=args.show_config)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``pipeline demo``."""
    from pipeline.cli.demo import run_demo

    return run_demo(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """``pipeline bench``."""
    from pipeline.cli.bench import main as bench_main

    return bench_main(args)


COMMANDS = {
    "run": cmd_run,
    "plan": cmd_plan,
    "demo": cmd_demo,
    "config": cmd_config,
    "models": cmd_models,
    "bench": cmd_bench,
    **review_commands.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # Every command connects to Ray explicitly (cluster.connect_ray). Without this, Ray Data
    # would start a second, embedded cluster from its own thread when the run's cluster is
    # shut down under it after an interrupt.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    try:
        return _dispatch(args)
    finally:
        logrelay.stop()


def _write_abandoned() -> bool:
    """Whether a run stopped watching a Ray Data write that still runs (only ``run`` and ``demo`` write)."""
    progress = sys.modules.get("pipeline.run.supervisor")  # not loaded: no run wrote anything
    return progress is not None and bool(progress.write_abandoned())


def _exit_now(code: int) -> NoReturn:
    """Exit at once, without the interpreter's exit handlers.

    ``ray.shutdown()`` there would stop Ray under Ray Data's threads, still in the abandoned
    write (see job._Run.interrupted), and end the process with exit 1.
    """
    sys.stdout.flush()
    logrelay.stop()
    os._exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    """Run one command; errors become their exit code and one line on stderr."""
    try:
        return COMMANDS[args.command](args)
    except UnexpectedError as exc:
        return _unexpected(exc)
    except PipelineError as exc:
        logs.say_error(str(exc), exc.exit_code)
        if _write_abandoned():  # on a stall or a lost lease: Ray was left up under it (job._Run.failed)
            _exit_now(exc.exit_code)
        return exc.exit_code
    except RunInterrupted as exc:
        logs.say_error(f"{exc}; rows written so far are kept: run the same command to resume", exc.exit_code)
        _exit_now(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pipeline config --schema | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: one line and where its traceback is, never the traceback
        return _unexpected(UnexpectedError(exc))


def _unexpected(error: UnexpectedError) -> int:
    """Say an unforeseen error in one line naming the file its traceback went to; its exit code."""
    path = logs.save_traceback(error.cause)
    logs.say_error(
        f"{error} (a bug in the pipeline: please report it with the traceback in {path})",
        error.exit_code,
        traceback_file=str(path),
    )
    return error.exit_code
