"""`crdtool data ...`: dataset utilities (synthetic data for quickstart, tests and CI)."""

from __future__ import annotations

from pathlib import Path

import typer

from crdtool.commands.common import console, user_errors
from crdtool.data.synth import make_synthetic_dataset, split_counts, synth_matches

data_app = typer.Typer(help="Dataset utilities: generate a small synthetic dataset.", no_args_is_help=True,
                       rich_markup_mode=None)


@data_app.command("synth", short_help="A deterministic synthetic dataset (no download).")
@user_errors
def synth(
    out: Path = typer.Argument(..., help="Folder to write (created; reused if it already matches)."),
    kind: str = typer.Option("unpaired", "--kind", help="unpaired (CycleGAN layout) or paired (pix2pix A|B)."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
    count: int = typer.Option(64, "--count", help="Training images per domain; eval splits get max(4, count//4)."),
    seed: int = typer.Option(0, "--seed", help="Same seed -> identical files."),
) -> None:
    """Write a deterministic synthetic dataset (shapes -> striped shapes, or edges -> shaded shapes)."""
    reused = synth_matches(out, kind, size, count, seed)
    path = make_synthetic_dataset(out, kind=kind, size=size, count=count, seed=seed)
    verb = "kept existing" if reused else "wrote"
    splits = ", ".join(f"{name} {n}" for name, n in split_counts(kind, count).items())
    console.print(f"{verb} {kind} dataset at [bold]{path}[/bold]: {splits} ({size}x{size}, seed {seed})",
                  highlight=False, soft_wrap=True)
