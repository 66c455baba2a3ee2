"""Every exception the pipeline raises on purpose, and every exit code, in one module.

Kept apart so any module can import it without import loops. Callers catch
:class:`PipelineError` for the family, or a subclass for the case. Each class carries
its exit code; :data:`EXIT_CODES` says what each code means, and is the one source of the
README's table (``scripts/sync-exit-codes.py``) and of ``pipeline --help``.
"""

from __future__ import annotations

import signal

#: Every code the ``pipeline`` command exits with, and what it means. The README's table is
#: generated from this; tests/pipeline/test_exit_codes.py runs the command into each one.
EXIT_CODES: dict[int, str] = {
    0: "success: the run committed, or the output already holds a run committed with the same "
    "configuration (nothing to do, nothing written; `--strict` makes that 3); `inspect`, `compare`, "
    "`report` done",
    2: "bad config, arguments, input or model (weights that do not fit the architecture), or an unsafe "
    "output: it is the input, inside it, holds it, or holds files the pipeline did not write; "
    "nothing was written",
    3: "the output already holds a committed run of another configuration (or, with `--strict`, of "
    "this one): nothing was written; pass `--overwrite` to redo it",
    4: "storage unreachable or refusing requests, or the output's bucket does not exist (named in the "
    "message)",
    5: "too many failed rows (`output.max_failure_fraction`, default 0.05): the rows are written, not "
    "committed; the message says how to accept them without redoing a row",
    6: "the Ray job failed, or the cluster at `resources.ray_address` did not answer within "
    "`resources.connect_timeout_s`, or a table commit was refused: the table (`output.table`) "
    "holds this run id already",
    7: "the output is in use by another job (its lease is live)",
    8: "`inspect`, `compare`, `report`: the output is not committed (parts but no `_SUCCESS`)",
    9: "`compare --min-agreement X`: agreement below X (top-1 labels; for embeddings, the fraction "
    "of rows whose cosine is at least the threshold)",
    10: "no worker of the GPU group joined within `resources.gpu_workers_timeout_s` (the message names "
    "the group and what was asked); nothing was classified",
    11: "the output holds an unfinished run this one cannot resume (another configuration, run id or "
    "carried columns): resume it with its own, or pass `--overwrite`; nothing was written",
    12: "`inspect`, `compare`, `report`: nothing at the URI (neither `_SUCCESS` nor `data/`)",
    13: "an unexpected error (a bug): one line names it and the file holding its traceback",
    130: "interrupted by SIGINT: during the write the batches in flight finish and are written first "
    "(at most `resources.stop_grace_s`); the rows written are kept, the summary says how many, the "
    "same command resumes",
    143: "interrupted by SIGTERM (likewise); a signal that comes after the commit exits 0",
}
UNEXPECTED_EXIT_CODE = 13


def exit_code_table() -> str:
    """:data:`EXIT_CODES` as the Markdown table README.md holds (``scripts/sync-exit-codes.py``)."""
    rows = [f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()]
    return "\n".join(["| code | meaning |", "| --- | --- |", *rows]) + "\n"


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose; raised bare, it is one we did not foresee."""

    exit_code = UNEXPECTED_EXIT_CODE


class ConfigError(PipelineError):
    """Raised before any work when the configuration is invalid.

    The message names the key, the offending value and what is allowed; where the value came
    from an environment variable, the variable first (that is what to fix).
    """

    exit_code = 2

    def __init__(self, key: str, value: object, allowed: str, *, variable: str | None = None) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        named = f"environment variable {variable} (config key '{key}')" if variable else f"config key '{key}'"
        super().__init__(f"{named}: got {value!r}; {allowed}")


class InputError(PipelineError):
    """Raised when the input location cannot be listed or holds no inputs."""

    exit_code = 2


class ModelError(PipelineError):
    """Raised when a model cannot be built or its weights cannot be trusted.

    Covers unknown architectures, missing weight files, checksum mismatches
    and checkpoints whose tensors do not fit the architecture.
    """

    exit_code = 2


class OutputExistsError(PipelineError):
    """Raised when the output already holds a run committed with another configuration.

    Or with this one, under ``--strict`` (``output.if_committed: fail``). Redoing it needs
    ``--overwrite``.
    """

    exit_code = 3


class ResumeRefusedError(PipelineError):
    """Raised when the output holds an unfinished run this config cannot resume.

    Another configuration hash, another ``--run-id``, other carried columns, or parts with
    no run state: resuming would mix two runs in one output.
    """

    exit_code = 11


class StorageError(PipelineError):
    """Raised when object storage cannot be reached or refuses an operation."""

    exit_code = 4


class StoreCallTimeout(OSError):  # noqa: N818  # named for what happened, like TimeoutError
    """Raised by the S3 client when one request, retries included, outlasts ``storage.call_timeout_s``.

    An ``OSError`` with ``errno.ETIMEDOUT`` (an outage: exit 4, and the run stays resumable),
    deliberately not a ``TimeoutError``: s3fs retries those itself, which would multiply the deadline.
    """


class FailureBudgetExceededError(PipelineError):
    """Raised after a run whose failed-row fraction is above the configured maximum.

    The rows are written, but the run is not committed.
    """

    exit_code = 5


class OutputInUseError(PipelineError):
    """Raised when another job holds the output's lease: one writer per output at a time."""

    exit_code = 7


class JobFailedError(PipelineError):
    """Raised when the Ray Data job itself fails (worker loss beyond retries, a stall)."""

    exit_code = 6


class TableCommitRefusedError(JobFailedError):
    """A table commit refused: the table already holds a commit of this run id (never two)."""


class ClusterUnreachableError(JobFailedError):
    """Raised when the configured Ray cluster does not answer within ``resources.connect_timeout_s``."""


class OutputsNotComparableError(PipelineError):
    """Raised by ``pipeline compare`` for two outputs that hold different things.

    A ``classify`` output (labels) and an ``embed`` output (vectors), or vectors of two
    dimensions: no row of one can be set against a row of the other.
    """

    exit_code = 2


class OutputNotFoundError(PipelineError):
    """Raised by ``pipeline inspect``, ``compare`` and ``report`` when nothing is at the URI.

    Neither ``_SUCCESS`` nor ``data/``: a mistyped path or prefix, not a storage outage.
    """

    exit_code = 12


class GpuWorkersUnavailableError(PipelineError):
    """Raised when no worker of the GPU group joins within ``resources.gpu_workers_timeout_s``.

    The driver asked the autoscaler for one; the message names the group, what its pods
    declare and what was asked for. Nothing was classified.
    """

    exit_code = 10


class OutputNotCommittedError(PipelineError):
    """Raised by ``pipeline inspect`` and ``compare`` for an output with parts but no ``_SUCCESS``.

    Its rows are a run in progress, a failed run or an interrupted one: not to be read as results.
    """

    exit_code = 8


class AgreementTooLowError(PipelineError):
    """Raised by ``pipeline compare --min-agreement X`` when the two runs' top-1 agreement is below X."""

    exit_code = 9


class UnexpectedError(PipelineError):
    """An exception no part of the pipeline foresaw (a bug), wrapped so it ends as one line.

    The command prints its type and first line, and writes the traceback of ``cause`` to
    a file it names (:func:`pipeline.ops.logs.save_traceback`).
    """

    exit_code = UNEXPECTED_EXIT_CODE

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        lines = str(cause).strip().splitlines()
        super().__init__(f"unexpected error {type(cause).__name__}" + (f": {lines[0]}" if lines else ""))


def as_pipeline_error(exc: Exception) -> PipelineError:
    """``exc`` as the error a command ends with: Ray's own as :class:`JobFailedError`, others unforeseen."""
    if isinstance(exc, PipelineError):
        return exc
    if type(exc).__module__.startswith("ray."):  # a lost node or actor outside the write
        return JobFailedError(f"{type(exc).__name__}: {exc}")
    return UnexpectedError(exc)


class RunInterrupted(BaseException):  # a signal, like KeyboardInterrupt, not an error
    """Raised in the driver when SIGINT or SIGTERM asks the run to stop.

    A ``BaseException``, like ``KeyboardInterrupt``, so no ``except Exception`` swallows it;
    the exit code is the shell's convention, 128 + the signal (130, 143).
    """

    def __init__(self, signum: int, rows_done: int | None = None) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        self.rows_done = rows_done  # rows the inference actors finished before the stop (None: unknown)
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class UnreadableFileError(JobFailedError):
    """A bookkeeping file under the output is not what this pipeline writes (e.g. cut short)."""
