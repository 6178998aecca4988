"""``crdtool quickstart``: the whole chain on generated data, on a CPU, in a few minutes.

synthetic data -> distill (online teacher -> CRD student) -> profile -> export (ONNX, INT8, FP16,
verified) -> bench. Everything lands in ``./data/quickstart`` and ``./runs/quickstart``.
"""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.rule import Rule

from crdtool.commands.common import console, parse_overrides, user_errors
from crdtool.commands.tables import print_bench, print_distill_result, render_comparison, render_export_result


def packaged_recipe() -> Path:
    """The quickstart recipe shipped inside the package (``recipes/quickstart.toml`` links to it)."""
    return Path(str(resources.files("crdtool") / "recipes" / "quickstart.toml"))


def quickstart_resume_command(workdir: Path, steps: Optional[int], set_: Optional[list[str]]) -> str:
    """``crdtool quickstart --resume`` with the options this quickstart was started with."""
    args = ["crdtool", "quickstart", "--resume"]
    if workdir != Path(".").resolve():
        args += ["--workdir", str(workdir)]
    if steps is not None:
        args += ["--max-steps", str(steps)]
    for item in set_ or []:
        args += ["--set", item]
    return shlex.join(args)


@user_errors
def quickstart(
    workdir: Path = typer.Option(Path("."), "--workdir", help="Where data/ and runs/ are created."),
    steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap the student steps (a faster smoke run)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted quickstart run."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                             help="Override a recipe key: --set train.lr=1e-4"),
) -> None:
    """Generate data, distil, profile, export and bench: the whole chain on a CPU in a few minutes."""
    from crdtool.bench.latency import bench_artifacts
    from crdtool.commands.distill import run_with_progress
    from crdtool.deploy.export import export_artifacts
    from crdtool.profile import profile_recipe

    workdir = workdir.resolve()
    overrides = {"data.root": str(workdir / "data" / "quickstart"),
                 "output_dir": str(workdir / "runs" / "quickstart"), **parse_overrides(set_)}
    if steps is not None:
        overrides["train.max_steps"] = steps

    console.print(Rule("1/4 distill"))
    recipe, result = run_with_progress(packaged_recipe(), resume, overrides)
    print_distill_result(console, recipe, result, resume_hint=quickstart_resume_command(workdir, steps, set_))
    if result.interrupted:
        raise typer.Exit(0)
    run_dir = result.run_dir

    console.print(Rule("2/4 profile (at the training size and at 256x256)"))
    render_comparison(console, profile_recipe(run_dir / "recipe.toml"))
    render_comparison(console, profile_recipe(run_dir / "recipe.toml", size=256))

    console.print(Rule("3/4 export"))
    exported = export_artifacts(run_dir, onnx=True, int8_cpu=True, fp16=True)
    render_export_result(exported, console)

    console.print(Rule("4/4 bench (CPU, each measurement in its own process)"))
    artifacts = [str(run_dir)] + [str(p) for p in exported.artifacts.values() if p.suffix == ".onnx"]
    test_images = recipe.data.root / "testA"
    results = bench_artifacts(artifacts, ("auto",), size=recipe.data.crop_size, runs=100, max_seconds=10.0,
                              warmup="auto", images=str(test_images))
    print_bench(console, results, title=f"quickstart student at {recipe.data.crop_size}x{recipe.data.crop_size}")
    console.print(f"\n[bold green]done.[/] Everything is in {run_dir}. Next: crdtool profile {run_dir}, "
                  f"crdtool bench {run_dir} --compare, or a real recipe: crdtool distill recipes/h2z.toml",
                  highlight=False, soft_wrap=True)
