"""Shared CLI plumbing: one-line errors, the console, ``--set key=value`` overrides."""

from __future__ import annotations

import functools
import tomllib
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from crdtool.errors import CrdError

console = Console()
err_console = Console(stderr=True)


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
