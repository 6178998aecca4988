"""``crdtool distill`` and ``crdtool quickstart``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from crdtool.commands.common import console, parse_overrides, user_errors


def _progress_columns():
    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))


def run_with_progress(recipe_path: str | Path, resume: bool = False, overrides: dict | None = None):
    """Run ``crdtool.distill`` with a rich progress bar (losses, it/s); returns the DistillResult."""
    from crdtool.distill import prepare_data
    from crdtool.recipe import load_recipe
    from crdtool.train.loop import Distiller

    recipe = load_recipe(recipe_path, overrides)
    prepare_data(recipe)
    distiller = Distiller(recipe)
    console.print(f"[bold]distill[/] {recipe.name}: teacher {recipe.teacher.spec().describe()}"
                  f"{' (pretrained)' if distiller.pretrained else ' (online)'} -> student "
                  f"{recipe.student.spec().describe()} on {distiller.rt.describe()}; run folder {distiller.run_dir}")
    total = distiller.total_steps()
    if recipe.train.max_steps is not None:
        total = min(total, _steps_until_student_cap(distiller, recipe.train.max_steps))
    t0, last = time.time(), [time.time(), 0]
    with Progress(*_progress_columns(), console=console, transient=False) as bar:
        task = bar.add_task("distill", total=total, rate="", info="")

        def on_progress(info: dict) -> None:
            now = time.time()
            if now - last[0] > 0.5 or info["step"] == total:
                rate = (info["step"] - last[1]) / max(now - last[0], 1e-9)
                losses = " ".join(f"{k}={v:.3g}" for k, v in list(info["losses"].items())[:5])
                bar.update(task, completed=info["step"], rate=f"{rate:.1f} it/s", info=f"{info['phase']} {losses}")
                last[0], last[1] = now, info["step"]

        distiller.on_progress = on_progress
        bar.update(task, completed=distiller.progress.step)
        result = distiller.run(resume=resume)
        bar.update(task, completed=result.steps)
    result.seconds = time.time() - t0
    return recipe, result


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


def print_result(recipe, result) -> None:
    if result.interrupted:
        console.print(f"[yellow]interrupted[/] at step {result.steps}; checkpoint written. Resume with: "
                      f"crdtool distill {recipe.source} --resume")
    table = Table(title=f"distill {recipe.name}: {result.steps} steps ({result.student_steps} student) "
                        f"in {result.seconds:.0f} s")
    table.add_column("student vs teacher")
    table.add_column("PSNR (dB)", justify="right")
    table.add_column("SSIM", justify="right")
    for label, ev in (("before", result.first_eval), ("after", result.last_eval)):
        if ev:
            table.add_row(label, f"{ev['psnr_db']:.2f}", f"{ev['ssim']:.4f}")
    console.print(table)
    console.print(f"student: {result.student_path}\nteacher: {result.teacher_path}\n"
                  f"metrics: {result.run_dir / 'metrics.jsonl'}\nsamples: {result.run_dir / 'samples'}")


@user_errors
def distill(
    recipe: Path = typer.Argument(..., help="TOML recipe (see recipes/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the recipe's output folder."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many student steps."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ..."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe key: --set train.lr=1e-4"),
) -> None:
    """Distil a student generator from a teacher with Content Relationship Distillation."""
    overrides = parse_overrides(set_)
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    if device is not None:
        overrides["train.device"] = device
    r, result = run_with_progress(recipe, resume, overrides)
    print_result(r, result)
