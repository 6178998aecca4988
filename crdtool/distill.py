"""``crdtool.distill.run(recipe)``: the library entry point behind ``crdtool distill``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from crdtool.recipe import Recipe, load_recipe
from crdtool.runtime import Runtime
from crdtool.train.loop import DistillResult, Distiller


def prepare_data(recipe: Recipe) -> Path:
    """Generate the recipe's synthetic dataset if it asks for one and it is not there yet."""
    d = recipe.data
    if d.synth is not None:
        from crdtool.data.synth import make_synthetic_dataset

        make_synthetic_dataset(d.root, kind=d.synth.kind, size=d.synth.size, count=d.synth.count, seed=d.synth.seed)
    return d.root


def run(recipe: Recipe | str | Path, resume: bool = False, overrides: dict[str, Any] | None = None,
        runtime: Runtime | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None) -> DistillResult:
    """Distil the recipe's student; ``resume`` continues from the run folder's latest checkpoint."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise ValueError("overrides apply to recipe files; edit the Recipe object instead")
    prepare_data(recipe)
    distiller = Distiller(recipe, runtime=runtime, on_progress=on_progress)
    return distiller.run(resume=resume)
