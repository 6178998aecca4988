"""``crdtool distill``: thin CLI over :func:`crdtool.distill.run`; the run's events become a header, a
progress bar and a summary, on rank 0 only under torchrun."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from crdtool.commands.common import console, parse_overrides, user_errors
from crdtool.commands.tables import print_distill_result
from crdtool.progress import StepProgress


class RunReport:
    """``on_progress`` for :func:`crdtool.distill.run`: prints the "start" event as a header, then shows the
    "step" events as a progress bar. Silent on ranks other than 0, whose runs are rank 0's copies."""

    def __init__(self) -> None:
        self.bar: StepProgress | None = None
        self.quiet = False

    def __enter__(self) -> "RunReport":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, info: dict[str, Any]) -> None:
        if info.get("event") == "start":
            self.quiet = info["rank"] != 0
            if not self.quiet:
                self._header(info)
                self.bar = StepProgress(console, "distill", info["total"])
        elif self.bar is not None and info.get("event") == "step":
            losses = " ".join(f"{k}={v:.3g}" for k, v in list(info["losses"].items())[:5])
            self.bar.update(info["step"], info=" ".join(x for x in (info.get("phase"), losses) if x))

    @staticmethod
    def _header(info: dict[str, Any]) -> None:
        console.print(f"[bold]distill[/] {info['name']}: teacher {info['teacher']} -> student {info['student']} on "
                      f"{info['device']}; run folder {info['run_dir']}", highlight=False, soft_wrap=True)
        for note in info["notes"]:  # choices the run made on its own (data split, D mode, cache)
            console.print(note, markup=False, highlight=False)


def run_with_progress(recipe_source: str | Path, resume: bool = False, overrides: dict | None = None):
    """:func:`crdtool.distill.run` on a recipe file or a run folder with a progress bar; returns (recipe, result)."""
    from crdtool.distill import load_distill_recipe, run

    recipe = load_distill_recipe(recipe_source, overrides)
    with RunReport() as report:
        result = run(recipe, resume=resume, on_progress=report)
    return recipe, result


@user_errors
def distill(
    recipe: Path = typer.Argument(..., metavar="RECIPE|RUN",
                                  help="TOML recipe (see recipes/), or a run folder (its recipe.toml) to --resume."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run: the run folder given, or the recipe's "
                                                        "output folder."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many student steps."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ..."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                             help="Override a recipe key: --set train.lr=1e-4"),
) -> None:
    """Distil a student generator from a teacher with Content Relationship Distillation."""
    overrides = parse_overrides(set_)
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    if device is not None:
        overrides["train.device"] = device
    r, result = run_with_progress(recipe, resume, overrides)
    if result.rank == 0:
        print_distill_result(console, r, result)
