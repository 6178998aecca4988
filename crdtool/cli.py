"""The ``crdtool`` command line: thin Typer wrappers over the library (see ``crdtool.commands``)."""

from __future__ import annotations

import importlib
import importlib.util

import typer

app = typer.Typer(
    name="crdtool",
    help="Content Relationship Distillation for image-to-image GANs: distill, profile, export, bench, search.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# (module, function, command name); each module is a thin CLI layer over a library module.
COMMANDS = [
    ("crdtool.commands.distill", "distill", "distill"),
    ("crdtool.commands.quickstart", "quickstart", "quickstart"),
    ("crdtool.commands.profile", "profile", "profile"),
    ("crdtool.commands.export", "export", "export"),
    ("crdtool.commands.bench", "bench", "bench"),
    ("crdtool.commands.bench", "fid_stats", "fid-stats"),
    ("crdtool.commands.search", "search", "search"),
]
SUBAPPS = [("crdtool.commands.data", "data_app", "data", "Datasets: synthesize, inspect.")]

for mod, fn, name in COMMANDS:
    if importlib.util.find_spec(mod) is not None:
        app.command(name)(getattr(importlib.import_module(mod), fn))
for mod, attr, name, help_ in SUBAPPS:
    if importlib.util.find_spec(mod) is not None:
        app.add_typer(getattr(importlib.import_module(mod), attr), name=name, help=help_)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True)) -> None:
    if version:
        from crdtool import __version__

        typer.echo(f"crdtool {__version__}")
        raise typer.Exit()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
