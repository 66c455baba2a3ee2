"""Every exception the pipeline raises on purpose, in one module.

Kept apart so any module can import it without import loops. Callers catch
:class:`PipelineError` for the family, or a subclass for the case.
"""

from __future__ import annotations

import signal


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""

    exit_code = 1


class ConfigError(PipelineError):
    """Raised before any work when the configuration is invalid.

    The message names the key, the offending value and what is allowed.
    """

    exit_code = 2

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"config key '{key}': got {value!r}; {allowed}")


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
    """Raised when the output location already holds a committed run.

    Re-running a committed run needs ``--overwrite``.
    """

    exit_code = 3


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


class ClusterUnreachableError(JobFailedError):
    """Raised when the configured Ray cluster does not answer within ``resources.connect_timeout_s``."""


class OutputNotCommittedError(PipelineError):
    """Raised by ``pipeline inspect`` and ``compare`` for an output with parts but no ``_SUCCESS``.

    Its rows are a run in progress, a failed run or an interrupted one: not to be read as results.
    """

    exit_code = 8


class AgreementTooLowError(PipelineError):
    """Raised by ``pipeline compare --min-agreement X`` when the two runs' top-1 agreement is below X."""

    exit_code = 9


class RunInterrupted(BaseException):  # a signal, like KeyboardInterrupt, not an error
    """Raised in the driver when SIGINT or SIGTERM asks the run to stop.

    A ``BaseException``, like ``KeyboardInterrupt``, so no ``except Exception`` swallows it;
    the exit code is the shell's convention, 128 + the signal (130, 143).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
