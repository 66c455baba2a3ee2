"""What a person sees while the job runs: the phase by name, then one bar of rows (rich), or log lines."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID, TextColumn
from rich.text import Text

from pipeline.ops import logs

# What the display shows for a phase (metrics.JOB_PHASES) whose name does not read as it is.
PHASE_TEXT = {"starting_ray": "starting Ray", "waiting_for_gpu_workers": "waiting for GPU workers"}


LOG_EVERY_S = 60.0


def phase_text(phase: str) -> str:
    """How the display names a phase: ``waiting_for_gpu_workers`` -> "waiting for GPU workers"."""
    return PHASE_TEXT.get(phase, phase.replace("_", " "))


class _Figures(ProgressColumn):
    """The rows: done/total, one rate and the time left; a start-up phase: its time so far."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(f"{task.elapsed or 0:.0f}s")
        speed = task.speed  # rows per second over rich's recent window
        rate = f"{speed:.1f} img/s" if speed else "- img/s"
        left = f"  {timedelta(seconds=round((task.total - task.completed) / speed))} left" if speed else ""
        return Text(f"{task.completed:.0f}/{task.total:.0f}  {rate}{left}")


class Display:
    """What a person sees while the job runs.

    On a terminal (rich): the start-up phase by name ("starting Ray", "loading model"),
    then one bar of the rows this run has left, with one rate and the time left; log lines
    are printed above it. Elsewhere: a ``progress`` log line every :data:`LOG_EVERY_S`.
    """

    def __init__(self, stream: IO[str], *, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._phase: TaskID | None = None
        self._rows: TaskID | None = None
        self._total = 0
        self.counting = False
        self._logged_at = time.monotonic()
        self._stream = stream

    def _start(self) -> Progress:
        if self._progress is None:
            console = Console(file=self._stream, highlight=False, soft_wrap=True)
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                _Figures(),
                console=console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
            logs.STDERR.above = lambda text: console.print(Text(text.rstrip("\n")))
        return self._progress

    def phase(self, name: str) -> None:
        """Show a named phase (metrics.JOB_PHASES) that has no row count; off a terminal, log it."""
        text = phase_text(name)
        if not self.enabled:
            logs.get_logger(stage="driver").info("phase", phase=name)
            return
        progress = self._start()
        if self._rows is not None:
            progress.update(self._rows, visible=False)
        if self._phase is None:
            self._phase = progress.add_task(text, total=None)
        progress.reset(self._phase, total=None, description=text, visible=True)

    def rows(self, total: int) -> None:
        """From now on, count ``total`` rows: the work this run has left."""
        self._total, self.counting = total, True
        if self.enabled:
            progress = self._start()
            if self._phase is not None:
                progress.update(self._phase, visible=False)
            self._rows = progress.add_task("classifying", total=total)

    def update(self, done: int, rate: float = 0.0) -> None:
        """``done`` of the rows counted so far; off a terminal, log it now and then."""
        if self._progress is not None and self._rows is not None:
            self._progress.update(self._rows, completed=done)
        elif not self.enabled and time.monotonic() - self._logged_at >= LOG_EVERY_S:
            self._logged_at = time.monotonic()
            left = (self._total - done) / rate if rate > 0 else None
            logs.get_logger(stage="driver").info(
                "progress", rows_done=done, rows_to_do=self._total, images_per_second=rate, seconds_left=left
            )

    def refresh(self) -> None:
        """Redraw now (the display also redraws itself a few times a second)."""
        if self._progress is not None:
            self._progress.refresh()

    def close(self) -> None:
        """Take the display off the terminal; log lines go straight to stderr again."""
        logs.STDERR.above = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
