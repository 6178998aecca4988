"""``crdtool.distill.run(recipe)``: the library entry point behind ``crdtool distill``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from crdtool.errors import CrdError
from crdtool.recipe import Recipe, load_recipe
from crdtool.runtime import Runtime
from crdtool.train.loop import Distiller
from crdtool.train.result import DistillResult

RUN_RECIPE = "recipe.toml"


def load_distill_recipe(source: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """A recipe file, or a run folder: its own ``recipe.toml`` (every ``--set`` it was started with is in it),
    with ``output_dir`` pinned to that folder so it resumes there from any working directory."""
    source = Path(source)
    if source.is_dir():
        if not (source / RUN_RECIPE).is_file():
            raise CrdError(f"{source} is a folder without {RUN_RECIPE}: give a recipe file or a run folder")
        return load_recipe(source / RUN_RECIPE, {**(overrides or {}), "output_dir": str(source)})
    return load_recipe(source, overrides)


def prepare_data(recipe: Recipe) -> Path:
    """Generate the recipe's synthetic dataset if it asks for one and it is not there yet."""
    d = recipe.data
    if d.synth is not None:
        from crdtool.data.synth import make_synthetic_dataset

        make_synthetic_dataset(d.root, kind=d.synth.kind, size=d.synth.size, count=d.synth.count, seed=d.synth.seed)
    return d.root


def run(recipe: Recipe | str | Path, resume: bool = False, overrides: dict[str, Any] | None = None,
        runtime: Runtime | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None) -> DistillResult:
    """Distil the recipe's student (a recipe, its file or a run folder); ``resume`` continues from the run
    folder's latest checkpoint, and resuming a finished run returns ``already_finished`` and writes nothing.

    ``on_progress`` gets ``{"event": "start", ...}`` once the run folder is ready (what runs where, the
    ``step`` it starts from, its ``total`` steps, ``notes`` on choices the run made itself, ``rank``), then
    ``{"event": "step", "step", "losses", ...}`` as it trains (every step; every ``LOG_EVERY`` steps for
    ``task = "sr"``)."""
    if not isinstance(recipe, Recipe):
        recipe = load_distill_recipe(recipe, overrides)
    elif overrides:
        raise ValueError("overrides apply to recipe files; edit the Recipe object instead")
    if recipe.task == "sr":  # its own compact trainer: patches, a frozen rrdb teacher, no discriminator
        from crdtool.train.sr import SRTrainer

        trainer: Distiller | SRTrainer = SRTrainer(recipe, on_progress=on_progress, runtime=runtime)
    else:
        prepare_data(recipe)
        trainer = Distiller(recipe, runtime=runtime, on_progress=on_progress)
    return trainer.run(resume=resume, on_start=on_progress)
