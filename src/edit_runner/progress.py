"""What a run shows while it works: one rich display with a bar per long stage (rate, ETA, status).

``progress=false`` turns the display off (clean SLURM logs); each stage is then one log line
when it starts and one when it ends, with its duration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")


def _log() -> logging.Logger:
    return logging.getLogger("edit_runner.progress")


class RunProgress:
    """A rich display shared by every stage of a run (a no-op display when disabled)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.enabled = enabled
        self.display = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console, disable=not enabled, transient=True,
        )

    def __enter__(self) -> Self:
        self.display.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.display.stop()

    def note(self, message: str, *args: object) -> None:
        """A log line: INFO without the live display (SLURM logs), DEBUG with it (the bars show it already)."""
        _log().log(logging.DEBUG if self.enabled else logging.INFO, message, *args)

    @contextmanager
    def stage(self, description: str, total: float | None = None) -> Iterator[StageTask]:
        """A bar (or a spinner when ``total`` is None) for one stage; removed when the stage ends."""
        start = time.perf_counter()
        self.note("%s ...", description)
        task = self.display.add_task(description, total=total, status="")
        try:
            yield StageTask(self.display, task)
        finally:
            self.display.remove_task(task)
            self.note("%s done in %.1f s", description, time.perf_counter() - start)


class StageTask:
    """One stage's bar: advance it, set its total or its status text."""

    def __init__(self, display: Progress, task: TaskID) -> None:
        self.display = display
        self.task = task

    def update(self, completed: float | None = None, total: float | None = None, status: str | None = None) -> None:
        """Set how far the stage is (and its status text)."""
        fields = {} if status is None else {"status": status}
        self.display.update(self.task, completed=completed, total=total, **fields)

    def track(self, items: Iterable[T], unit: str = "items", per_item: int = 1) -> Iterator[T]:
        """Advance the bar once per item; the status shows the rate in ``unit`` (``per_item`` of them per item)."""
        if hasattr(items, "__len__"):
            self.display.update(self.task, total=len(items))  # type: ignore[arg-type]
        start = time.perf_counter()
        for done, item in enumerate(items, start=1):
            yield item
            rate = done * per_item / max(time.perf_counter() - start, 1e-9)
            self.display.update(self.task, advance=1, status=f"{rate:.1f} {unit}/s")


def throttled(callback: Callable[..., None], seconds: float = 0.5) -> Callable[..., None]:
    """``callback`` at most once per ``seconds`` (later calls in between are dropped, except ``final=True``)."""
    last = [0.0]

    def call(*args: object, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - last[0] >= seconds:
            last[0] = now
            callback(*args)

    return call
