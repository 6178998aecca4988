"""``crdtool search``: AutoGAN-Distiller style search under a MAC budget (thin layer over crdtool.search)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from crdtool.commands.common import console, parse_overrides, user_errors
from crdtool.progress import StepProgress


def _run(recipe: Path, budget: Optional[str], window: Optional[float], resume: bool, out: Optional[Path],
         overrides: dict):
    from crdtool.search.search import Searcher, load_search_recipe
    from crdtool.search.space import format_macs

    cfg = load_search_recipe(recipe, overrides)
    searcher = Searcher(cfg, budget, window, out)
    with StepProgress(console, "search", searcher.cfg.search.pretrain_steps + searcher.cfg.search.steps) as bar:
        def on_progress(info: dict) -> None:
            if info["event"] == "start":
                lo, hi = info["budget"]
                for w in info["warnings"]:
                    console.print(f"[bold yellow]warning:[/] {w}", highlight=False)
                console.print(f"[bold]search[/] {cfg.name}: budget \\[{format_macs(lo)}, {format_macs(hi)}] MACs "
                              f"at {info['size']}px; teacher {info['teacher']}; loss {info['loss']}; "
                              f"{info['device']}; run folder {info['run_dir']}", highlight=False)
                return
            bar.footer = f"argmax: {info['arch']}"
            bar.update(info["step"], info=f"{info['phase']} loss {info['loss']:.3f}  "
                                          f"E[MACs] {format_macs(info['expected_macs'])}  "
                                          f"argmax {format_macs(info['argmax_macs'])}  lambda {info['lambda']:.3g}")

        searcher.on_progress = on_progress
        return cfg, searcher.run(resume=resume)


def print_result(cfg, r, sets: Optional[list[str]] = None) -> None:
    from crdtool.search.space import arch_macs, format_macs

    if r.interrupted:  # the hint repeats every --set: the search recipe is re-read on resume
        args = ["crdtool", "search", str(cfg.source), "--resume", "--out", str(r.run_dir)]
        for item in sets or []:
            args += ["--set", item]
        console.print(f"[yellow]interrupted[/] at step {r.steps}; checkpoint written. Resume with: "
                      f"{shlex.join(args)}", highlight=False, soft_wrap=True)
        return
    for w in r.warnings:
        console.print(f"[bold yellow]warning:[/] {w}", highlight=False)
    macs = arch_macs(r.arch, r.size)
    table = Table(title=f"derived network ({r.derive}): {format_macs(r.macs)} MACs at {r.size}px, "
                        f"{r.params / 1e6:.3f}M params")
    for col, just in (("layer", "left"), ("operator", "left"), ("width", "right"), ("MACs", "right")):
        table.add_column(col, justify=just)
    stem_ops = ("conv7x7", "conv3x3 s2", "conv3x3 s2")
    for i, (w, m) in enumerate(zip(r.arch["stem"], macs["stem"])):
        table.add_row(f"stem {i}", stem_ops[i], str(w), format_macs(m))
    for i, (c, m) in enumerate(zip(r.arch["cells"], macs["cells"])):
        table.add_row(f"cell {i}", c["op"], str(c["width"]), format_macs(m))
    head_ops = ("convT3x3 s2", "convT3x3 s2", "conv7x7")
    for i, (w, m) in enumerate(zip([*r.arch["head"], r.arch["output_nc"]], macs["head"])):
        table.add_row(f"head {i}", head_ops[i], str(w), format_macs(m))
    console.print(table)
    status = "[green]inside[/]" if r.inside else "[red]OUTSIDE[/]"
    console.print(f"window [{format_macs(r.budget_min)}, {format_macs(r.budget_max)}]: {status}; "
                  f"{r.steps} steps in {r.seconds:.0f} s; final lambda {r.lam:.3g}; "
                  f"E[MACs] {format_macs(r.expected_macs)}; at 256px {format_macs(r.arch['meta']['macs_256'])}",
                  highlight=False)
    console.print(f"arch: {r.arch_path}\nweights (supernet-inherited, untrained): {r.generator_path}\n"
                  f"log: {r.log_path}\nnext: distil it with student = {{ arch = \"{Path(r.arch_path).resolve()}\" }} "
                  f"(or --set student.arch={Path(r.arch_path).resolve()})", highlight=False)


@user_errors
def search(
    recipe: Path = typer.Argument(..., help="Search recipe (.toml), e.g. recipes/quickstart-search.toml."),
    budget: Optional[str] = typer.Option(
        None, "--budget", help="MAC budget at the recipe's crop size: 1.4G, 350M, 88e6 (default: search.budget)."),
    window: Optional[float] = typer.Option(
        None, "--window", help="Accept [budget*(1-window), budget] (default: search.window, 0.1)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the search in the output folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: the recipe's output_dir)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ..."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                             help="Override a recipe key: --set search.steps=50"),
) -> None:
    """Search a generator architecture under a MAC budget (AutoGAN-Distiller); writes RUN/arch.json."""
    overrides = parse_overrides(set_)
    if device is not None:
        overrides["search.device"] = device
    cfg, result = _run(recipe, budget, window, resume, out, overrides)
    print_result(cfg, result, set_)
