"""Progress bars for long work (rich), silent when not on a terminal unless forced."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def _enabled() -> bool:
    flag = os.environ.get("CAMSCOPE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not _enabled(),
        transient=False,
    )


def track_weighted(items: Iterable[tuple[int, T]], total: int, description: str) -> Iterator[T]:
    """Iterate over ``(weight, item)`` pairs, advancing the bar by ``weight`` (e.g. a chunk size)."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for weight, item in items:
            yield item
            progress.advance(task, weight)
