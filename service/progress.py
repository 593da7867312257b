"""Progress bars on stderr for long jobs (embedding caches, fine-tuning): rich, and only
where a person watches (a terminal) unless a caller forces them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def progress_bar(
    total: int,
    description: str,
    *,
    enabled: bool,
    completed: int = 0,
    fields: dict[str, Any] | None = None,
    extra: Sequence[str] = (),
    transient: bool = False,
):
    """A started rich Progress with one task, or None when not ``enabled``. ``extra`` are
    text columns (e.g. "loss {task.fields[loss]}") shown before the times."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   *(TextColumn(c) for c in extra), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=transient)  # fmt: skip
    bar.start()
    bar.add_task(description, total=total, completed=completed, **(fields or {}))
    return bar


def on_terminal() -> bool:
    return sys.stderr.isatty()
