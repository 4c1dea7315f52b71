"""Progress without a terminal: plain lines on stderr (CI logs, pipes) instead of rich's live bars.

`PlainProgress` takes the calls that stages, training and searches make on a rich `Progress` (add_task, update,
advance, remove_task) and prints one line when a task's description changes (a stage starts), one when a step of a
counted task ends (a stage, a lottery round, a search trial), and for every other task (training epochs, timing runs)
only a start and an end line, so a log stays short.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

# Tasks whose every step is worth a line: the pipeline's stages, lottery rounds, policy-search trials.
STEP_TASKS = ("stages", "lottery rounds", "policy search")


@dataclass
class _Task:
    name: str
    description: str
    total: float | None
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    step_started: float = field(default_factory=time.monotonic)


class PlainProgress:
    """A drop-in for rich.progress.Progress that writes plain lines to a stream (default: stderr)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._tasks: dict[int, _Task] = {}
        self._next = 0
        self._t0 = time.monotonic()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        try:
            (self.stream or sys.stderr).flush()
        except (OSError, ValueError):
            pass

    def print(self, *objects: Any) -> None:
        self._line(" ".join(str(o) for o in objects))

    def _line(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(f"[{time.monotonic() - self._t0:7.1f}s] {text}\n")
        stream.flush()

    def add_task(self, description: str, total: float | None = 100.0, completed: float = 0, **_: Any) -> int:
        task_id, self._next = self._next, self._next + 1
        self._tasks[task_id] = _Task(description, description, total, float(completed))
        if description not in STEP_TASKS:
            self._line(f"{description}: started" + (f" ({total:g} steps)" if total else ""))
        return task_id

    def update(self, task_id: int, *, description: str | None = None, advance: float | None = None,
               completed: float | None = None, total: float | None = None, **_: Any) -> None:
        """A new description starts a step (one line); with `advance` in the same call the step is instantaneous
        (e.g. a stage reused from an earlier run) and gets one line in all."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        if total is not None:
            task.total = total
        n = (advance or 0) + (completed - task.completed if completed is not None else 0)
        if description is not None and description != task.description:
            task.description = description
            task.step_started = time.monotonic()
            if n > 0:
                task.completed += n
                self._line(f"{description}{self._of(task)}")
                return
            self._line(f"{description}: started")
        self._steps(task, n)

    def advance(self, task_id: int, advance: float = 1) -> None:
        task = self._tasks.get(task_id)
        if task is not None:
            self._steps(task, advance)

    @staticmethod
    def _of(task: _Task) -> str:
        return f" [{task.completed:g}/{task.total:g}]" if task.total else f" [{task.completed:g}]"

    def _steps(self, task: _Task, n: float) -> None:
        if n <= 0:
            return
        task.completed += n
        if task.name in STEP_TASKS:
            took = time.monotonic() - task.step_started
            label = task.description if task.name == "stages" else task.name
            self._line(f"{label}: done in {took:.1f} s{self._of(task)}")
            task.step_started = time.monotonic()

    def remove_task(self, task_id: int) -> None:
        task = self._tasks.pop(task_id, None)
        if task is not None and task.name not in STEP_TASKS:
            self._line(f"{task.name}: done in {time.monotonic() - task.started:.1f} s{self._of(task)}")


def make_progress(stream: TextIO | None = None) -> Any:
    """rich's live bars on a terminal, plain lines elsewhere (CI, pipes, files)."""
    err = stream or sys.stderr
    try:
        tty = err.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return PlainProgress(stream)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), transient=True,
                    console=Console(stderr=True))


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Silences a library that logs and prints per-node notes or progress bars of its own (onnxslim, onnx2torch,
    ONNX Runtime's quantizer, the LiteRT Quantizer): stdout and stderr are swallowed and the root logger only passes
    errors, so the user sees edgekit's progress and one-line errors."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
