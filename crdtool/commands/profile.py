"""``crdtool profile``: MACs and parameters of a recipe's teacher vs student, a checkpoint, or a model name.

Thin layer over :mod:`crdtool.profile`: rich tables for people, ``--json`` for machines; a
``CrdError`` becomes one printed line and exit code 1.
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from crdtool.commands.common import fail, make_console
from crdtool.errors import CrdError
from crdtool.models.registry import GeneratorSpec
from crdtool.profile import (
    CONVENTIONS,
    DEFAULT_CONVENTION,
    Comparison,
    ModelProfile,
    check_convention,
    format_macs,
    format_params,
    format_ratio,
    format_shape,
    profile_checkpoint,
    profile_document,
    profile_recipe,
    profile_spec,
)


def profile(
    target: Optional[str] = typer.Argument(
        None, help="A recipe (.toml: teacher vs student) or a generator checkpoint (.safetensors, run folder, "
                   "official .pth). Omit it and give --model instead."),
    model: Optional[str] = typer.Option(None, "--model", help="Generator family, e.g. resnet, mobile_resnet, unet."),
    ngf: int = typer.Option(64, "--ngf", help="Width (with --model)."),
    n_blocks: int = typer.Option(9, "--n-blocks", help="Residual blocks (resnet families, with --model)."),
    num_downs: int = typer.Option(8, "--num-downs", help="Downsamplings (unet, with --model)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="instance, batch or none (default: the family's)."),
    size: Optional[int] = typer.Option(
        None, "--size", help="Input side in pixels (square, batch 1); must be a multiple of the network's stride. "
                             "Default: the recipe's crop size, else 256."),
    top: int = typer.Option(0, "--top", help="Also list the K layers with the most MACs."),
    convention: str = typer.Option(
        DEFAULT_CONVENTION, "--convention",
        help="Which count --top sorts by: literature (torchprofile-compatible, ConvTranspose over its output "
             "grid) or exact (every multiply-accumulate once). Totals always show both."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (totals and all layers)."),
) -> None:
    """Show what compression buys: MACs (two conventions) and parameters, per model and per layer."""
    console = make_console()
    try:
        check_convention(convention)
        result = _profile_target(target, model, ngf, n_blocks, num_downs, norm, size)
    except CrdError as e:
        fail(str(e))
    if json_out:
        print(json.dumps(profile_document(result), indent=2))
        return
    if isinstance(result, Comparison):
        render_comparison(console, result, top=top, convention=convention)
    else:
        render_profile(console, result, top=top, convention=convention)


def _profile_target(target: Optional[str], model: Optional[str], ngf: int, n_blocks: int, num_downs: int,
                    norm: Optional[str], size: Optional[int]) -> ModelProfile | Comparison:
    if target is not None and model is not None:
        raise CrdError("give either a recipe/checkpoint or --model, not both")
    if model is not None:
        spec = GeneratorSpec(model, ngf=ngf, n_blocks=n_blocks, num_downs=num_downs, norm=norm)
        return profile_spec(spec, 256 if size is None else size)
    if target is None:
        raise CrdError("nothing to profile: give a recipe (.toml), a checkpoint, or --model NAME")
    if target.endswith(".toml"):
        return profile_recipe(target, size)
    return profile_checkpoint(target, 256 if size is None else size)


# ---------------------------------------------------------------- rendering (also used by quickstart)

_LABELS = {"literature": "MACs (literature)", "exact": "MACs (exact)"}
_SHORT = {"literature": "lit.", "exact": "exact"}
_CAPTION = "lit. = literature MACs (torchprofile-compatible), exact = every multiply-accumulate once"


def render_profile(console: Console, result: ModelProfile, top: int = 0,
                   convention: str = DEFAULT_CONVENTION) -> None:
    """Totals of one model, then its ``top`` heaviest layers."""
    console.print(f"{result.name} @ {format_shape(result.input_shape)}", style="bold", markup=False, highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for c in CONVENTIONS:
        table.add_row(_LABELS[c], format_macs(result.macs[c]))
    table.add_row("params", format_params(result.params))
    console.print(table)
    _render_notes(console, result)
    if top > 0:
        render_top(console, result, top, convention)


def render_comparison(console: Console, comparison: Comparison, top: int = 0,
                      convention: str = DEFAULT_CONVENTION) -> None:
    """Teacher | student | ratio for MACs in both conventions and params (crdtool quickstart ends with this)."""
    t, s = comparison.teacher, comparison.student
    title = f"{comparison.name + ': ' if comparison.name else ''}teacher vs student @ {format_shape(t.input_shape)}"
    console.print(title, style="bold", markup=False, highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column(f"teacher ({t.name})", justify="right")
    table.add_column(f"student ({s.name})", justify="right")
    table.add_column("ratio", justify="right")
    for c in CONVENTIONS:
        table.add_row(_LABELS[c], format_macs(t.macs[c]), format_macs(s.macs[c]), format_ratio(comparison.mac_ratio(c)))
    table.add_row("params", format_params(t.params), format_params(s.params), format_ratio(comparison.param_ratio))
    console.print(table)
    for p in (t, s):
        _render_notes(console, p)
    if top > 0:
        render_top(console, t, top, convention, label="teacher")
        render_top(console, s, top, convention, label="student")


def render_top(console: Console, result: ModelProfile, k: int, convention: str = DEFAULT_CONVENTION,
               label: str = "") -> None:
    # the second convention only where it fits: an 80-column terminal keeps the essentials uncut
    other = [c for c in CONVENTIONS if c != convention] if console.width >= 100 else []
    console.print(f"{label + ' ' if label else ''}{result.name}: top {k} layers by {convention} MACs "
                  f"(shapes CxHxW, batch {result.input_shape[0]})", style="bold", markup=False, highlight=False)
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("module", overflow="fold", min_width=8)  # long paths wrap; numbers and shapes never get cut
    table.add_column("op", overflow="fold", min_width=6)
    for name in ("input", "output"):
        table.add_column(name, no_wrap=True)
    for name in (_SHORT[convention], *(_SHORT[c] for c in other), "params", "share"):
        table.add_column(name, justify="right", no_wrap=True)
    for i, row in enumerate(result.top(k, convention), 1):
        table.add_row(str(i), row.path or "<root>", row.op, format_shape(row.input_shape, batch=False),
                      format_shape(row.output_shape, batch=False), format_macs(row.macs[convention]),
                      *(format_macs(row.macs[c]) for c in other), format_macs(row.params),
                      f"{100 * result.share(row, convention):.1f}%")
    console.print(table)
    console.print(_CAPTION, style="dim", markup=False, highlight=False)


def _render_notes(console: Console, result: ModelProfile) -> None:
    if result.unsupported_ops:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(result.unsupported_ops.items()))
        console.print(f"{result.name}: ops without a counting rule (counted as 0): {ops}", style="yellow",
                      markup=False, highlight=False)
