"""Shared CLI plumbing: one-line errors, the console, ``--set key=value`` overrides."""

from __future__ import annotations

import functools
import os
import tomllib
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from crdtool.errors import CrdError

PIPED_WIDTH = 200


def make_console(stderr: bool = False) -> Console:
    """A rich console; piped or logged (no terminal, no $COLUMNS) it is wide enough that tables keep one
    line per row instead of rich's 80-column default, which folds cells into vertical letter columns."""
    c = Console(stderr=stderr)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(stderr=stderr, width=PIPED_WIDTH)
    return c


console = make_console()
err_console = make_console(stderr=True)


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def user_errors(fn: Callable) -> Callable:
    """Turn a ``CrdError`` into one printed line and exit code 1; other exceptions keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CrdError as e:
            fail(str(e))

    return wrapper


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.max_steps=10", "data.root=\\"x\\""]`` -> {"train.max_steps": 10, ...}; values are TOML (bare words = strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise CrdError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
    return out
