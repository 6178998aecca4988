"""One progress helper for all long work, so tests (or ``CRDTOOL_QUIET=1``) can silence it."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_enabled = os.environ.get("CRDTOOL_QUIET", "") in ("", "0")


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = flag


class _Silent:
    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


@contextlib.contextmanager
def progress(transient: bool = False) -> Iterator[Progress | _Silent]:
    """``with progress() as p: t = p.add_task("distill", total=n); p.update(t, advance=1, info="...")``."""
    if not _enabled:
        yield _Silent()
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, transient=transient) as p:
        yield p
