"""``crdtool profile``: MACs and parameters of a recipe's teacher vs student, a checkpoint, or a model name.

Thin layer over :mod:`crdtool.profile`: rich tables for people, ``--json`` for machines; a
``CrdError`` becomes one printed line and exit code 1.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from crdtool.commands.common import fail, make_console
from crdtool.commands.tables import render_comparison, render_profile
from crdtool.errors import CrdError
from crdtool.models.registry import family_spec
from crdtool.profile import (
    DEFAULT_CONVENTION,
    TOTAL_ONLY_CONVENTIONS,
    Comparison,
    ModelProfile,
    check_convention,
    format_macs,
    profile_checkpoint,
    profile_document,
    profile_recipe,
    profile_spec,
)
from crdtool.weights.cache import PREFIX as WEIGHTS_PREFIX, resolve_reference


def profile(
    target: Optional[str] = typer.Argument(
        None, help="A recipe (.toml: teacher vs student), a searched arch.json, or a generator checkpoint "
                   "(.safetensors, run folder, official .pth). Omit it and give --model instead."),
    model: Optional[str] = typer.Option(None, "--model", help="Generator family, e.g. resnet, mobile_resnet, unet."),
    ngf: Optional[int] = typer.Option(None, "--ngf", help="Width (with --model; default: the family's, 64 for most)."),
    n_blocks: Optional[int] = typer.Option(
        None, "--n-blocks", help="Residual blocks (with --model; default: the family's, resnets 9, rrdb 23)."),
    scale: Optional[int] = typer.Option(None, "--scale", help="Super-resolution factor (SR families, with --model)."),
    num_downs: int = typer.Option(8, "--num-downs", help="Downsamplings (unet, with --model)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="instance, batch or none (default: the family's)."),
    size: Optional[int] = typer.Option(
        None, "--size", help="Input side in pixels (square, batch 1); must be a multiple of the network's stride. "
                             "Default: the recipe's (or the run folder's) crop size, else 256."),
    top: int = typer.Option(0, "--top", help="Also list the K layers with the most MACs."),
    convention: str = typer.Option(
        DEFAULT_CONVENTION, "--convention",
        help="Which count --top sorts by: literature (torchprofile-compatible, ConvTranspose over its output "
             "grid) or exact (every multiply-accumulate once). Totals always show both. agd: also print "
             "AutoGAN-Distiller's total (thop: + conv biases + LeakyReLU outputs); --top then sorts by exact."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (totals and all layers)."),
) -> None:
    """Show what compression buys: MACs (two conventions) and parameters, per model and per layer."""
    console = make_console()
    try:
        check_convention(convention, total_only=True)
        result = _profile_target(target, model, ngf, n_blocks, num_downs, norm, size, scale)
    except CrdError as e:
        fail(str(e))
    if json_out:
        print(json.dumps(profile_document(result), indent=2))
        return
    extra = convention if convention in TOTAL_ONLY_CONVENTIONS else None
    convention = "exact" if extra else convention
    if isinstance(result, Comparison):
        render_comparison(console, result, top=top, convention=convention)
    else:
        render_profile(console, result, top=top, convention=convention)
    for p in ([result.teacher, result.student] if isinstance(result, Comparison) else [result]) if extra else []:
        console.print(f"{p.name}: {format_macs(p.total(extra))} MACs counted as AutoGAN-Distiller does (thop: "
                      f"convs + 1 per biased conv output + 1 per LeakyReLU output)", markup=False, highlight=False)


def _profile_target(target: Optional[str], model: Optional[str], ngf: Optional[int], n_blocks: Optional[int],
                    num_downs: int, norm: Optional[str], size: Optional[int],
                    scale: Optional[int] = None) -> ModelProfile | Comparison:
    if target is not None and model is not None:
        raise CrdError("give either a recipe/checkpoint or --model, not both")
    if model is not None:
        spec = family_spec(model, ngf=ngf, n_blocks=n_blocks, num_downs=num_downs, norm=norm, scale=scale)
        return profile_spec(spec, 256 if size is None else size)
    if target is None:
        raise CrdError("nothing to profile: give a recipe (.toml), a checkpoint, or --model NAME")
    if target.endswith(".toml"):
        return profile_recipe(target, size)
    if target.endswith(".json"):  # a network derived by `crdtool search` (arch.json)
        from crdtool.models.sr_student import load_arch_spec

        return profile_spec(load_arch_spec(target), 256 if size is None else size)
    if target.startswith(WEIGHTS_PREFIX):  # a cached reference generator, e.g. weights:vintagify
        target = str(resolve_reference(target, "profile"))
    from crdtool.models.checkpoints import checkpoint_layout

    # on stderr, so --json stays one document on stdout
    make_console(stderr=True).print(f"checkpoint: {checkpoint_layout(target)}", markup=False, highlight=False)
    from crdtool.bench.artifacts import native_size

    return profile_checkpoint(target, native_size(target) if size is None else size)
