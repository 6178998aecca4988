"""``crdtool distill``: thin CLI over :mod:`crdtool.distill` with progress and a summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from crdtool.commands.common import console, parse_overrides, user_errors
from crdtool.commands.tables import print_distill_result
from crdtool.progress import StepProgress


def run_with_progress(recipe_source: str | Path, resume: bool = False, overrides: dict | None = None):
    """Run ``crdtool.distill`` on a recipe file or a run folder with progress; returns (recipe, DistillResult)."""
    from crdtool.distill import load_distill_recipe, prepare_data
    from crdtool.train.loop import Distiller

    recipe = load_distill_recipe(recipe_source, overrides)
    if recipe.task == "sr":
        return recipe, _run_sr_with_progress(recipe, resume)
    prepare_data(recipe)
    distiller = Distiller(recipe)
    teacher_spec = getattr(distiller.G_A, "spec", None) or recipe.teacher.spec()  # a checkpoint describes itself
    console.print(f"[bold]distill[/] {recipe.name}: teacher {teacher_spec.describe()}"
                  f"{' (pretrained)' if distiller.pretrained else ' (online)'} -> student "
                  f"{recipe.student.spec().describe()} on {distiller.rt.describe()}; run folder {distiller.run_dir}",
                  highlight=False, soft_wrap=True)
    if getattr(distiller.G_A, "checkpoint_layout", None):
        console.print(f"teacher checkpoint: {distiller.G_A.checkpoint_layout}", markup=False, highlight=False)
    for note in getattr(distiller, "notes", []):  # choices the run made on its own (data split, D mode, cache)
        console.print(note, markup=False, highlight=False)
    total = distiller.total_steps()
    if recipe.train.max_steps is not None:
        total = min(total, _steps_until_student_cap(distiller, recipe.train.max_steps))
    t0 = time.time()
    with StepProgress(console, "distill", total) as bar:
        def on_progress(info: dict) -> None:
            losses = " ".join(f"{k}={v:.3g}" for k, v in list(info["losses"].items())[:5])
            bar.update(info["step"], info=f"{info['phase']} {losses}")

        distiller.on_progress = on_progress
        result = distiller.run(resume=resume)
    result.seconds = time.time() - t0
    return recipe, result


def _run_sr_with_progress(recipe, resume: bool):
    """``task = "sr"``: the SR trainer with the same progress bar and summary."""
    from crdtool.train.sr import SRTrainer

    trainer = SRTrainer(recipe)
    teacher = f"rrdb x{recipe.data.scale} ({recipe.teacher.checkpoint.name})" if trainer.teacher is not None else "none"
    console.print(f"[bold]distill[/] {recipe.name}: teacher {teacher} -> student {trainer.student.spec.describe()} "
                  f"on {trainer.device}; run folder {trainer.run_dir}", highlight=False)
    t0 = time.time()
    with StepProgress(console, "distill", trainer.total_steps) as bar:
        def on_progress(info: dict) -> None:
            if info.get("kind") == "train":
                losses = " ".join(f"{k}={v:.3g}" for k, v in info.items() if k not in ("kind", "step", "total", "lr"))
                bar.update(info["step"], info=losses)

        trainer.on_progress = on_progress
        result = trainer.run(resume=resume)
    result.seconds = time.time() - t0
    return result


def _steps_until_student_cap(distiller, cap: int) -> int:
    """Total steps (teacher + student) of the schedule up to the ``cap``-th student step."""
    per_epoch, steps, students = distiller._epoch_len(), 0, 0
    for ph in distiller.phases:
        for _ in range(ph.epochs * per_epoch):
            steps += 1
            students += ph.kind != "teacher"
            if students >= cap:
                return steps
    return steps


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
    print_distill_result(console, r, result)
