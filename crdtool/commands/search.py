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
    recipe: Path = typer.Argument(..., help="Search recipe (.toml), e.g. recipes/quickstart-search.toml or "
                                            "recipes/sr-search-x4.toml."),
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
    """Search a generator architecture under a MAC budget (AutoGAN-Distiller); writes RUN/arch.json.

    A recipe with task = "sr" searches a super-resolution student (RUN/sr_arch.json).
    """
    from crdtool.recipe import read_toml
    from crdtool.search.sr_recipe import is_sr_search_recipe

    overrides = parse_overrides(set_)
    if is_sr_search_recipe(read_toml(recipe, overrides)):
        _check_sr_options(window, resume, device)
        print_sr_result(_run_sr(recipe, budget, out, overrides))
        return
    if device is not None:
        overrides["search.device"] = device
    cfg, result = _run(recipe, budget, window, resume, out, overrides)
    print_result(cfg, result, set_)


# ---------------------------------------------------------------------------------------------- task "sr"


def _check_sr_options(window: Optional[float], resume: bool, device: Optional[str]) -> None:
    from crdtool.errors import CrdError

    if window is not None:
        raise CrdError("--window does not apply to an SR search: its budget is a ceiling (search.budget, --budget)")
    if resume:
        raise CrdError("an SR search keeps no checkpoints and cannot be resumed; run it again into a new --out")
    if device not in (None, "auto", "cpu"):
        raise CrdError(f"the SR search runs on the CPU; --device {device} is not supported for it")


def _run_sr(recipe: Path, budget: Optional[str], out: Optional[Path], overrides: dict):
    from crdtool.search.space import format_macs
    from crdtool.search.sr_recipe import load_sr_search_recipe, run_sr_search_recipe

    cfg = load_sr_search_recipe(recipe, overrides)
    config = cfg.to_config(budget, out)
    console.print(f"[bold]SR search[/] {cfg.name}: budget {format_macs(config.budget)} MACs at a {config.size}x"
                  f"{config.size} LR input; {config.cells} cells of {', '.join(config.ops)} x widths "
                  f"{'/'.join(map(str, config.widths))}; run folder {config.out_dir}", highlight=False)
    with StepProgress(console, "search", config.steps) as bar:
        def on_progress(info: dict) -> None:
            extra = f"  E[MACs] {info['expected_gmacs']:.2f}G" if "expected_gmacs" in info else ""
            bar.update(info["step"], info=f"L1 {info['l1']:.4f}{extra}")

        return run_sr_search_recipe(cfg, budget, out, on_progress)


def print_sr_result(r) -> None:
    from crdtool.search.space import format_macs

    table = Table(title=f"derived SR network: {format_macs(r.macs)} MACs at a {r.size}x{r.size} LR input, "
                        f"{r.params / 1e6:.3f}M params")
    for col, just in (("layer", "left"), ("operator", "left"), ("width", "right"), ("MACs", "right")):
        table.add_column(col, justify=just)
    for i, (c, m) in enumerate(zip(r.arch["cells"], r.cell_macs)):
        table.add_row(f"cell {i}", c["op"], str(c["width"]), format_macs(m))
    console.print(table)
    fits = "[green]within[/]" if r.macs <= r.budget else "[red]OVER[/]"
    repaired = f"; {r.repaired} cell(s) narrowed to fit" if r.repaired else ""
    console.print(f"budget {format_macs(r.budget)}: {fits}{repaired}; {r.steps} steps in {r.seconds:.0f} s",
                  highlight=False)
    console.print(f"arch: {r.arch_path}\nnext: distil it with a task = \"sr\" recipe and student = "
                  f"{{ arch = \"{Path(r.arch_path).resolve()}\" }}", highlight=False)
