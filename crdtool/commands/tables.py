"""Every table and summary the CLI prints, in one place: ``crdtool quickstart`` shows the same ones as
``distill``, ``profile``, ``export`` and ``bench``."""

from __future__ import annotations

import math
import shlex
from typing import Sequence

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crdtool.bench.latency import LatencyResult
from crdtool.bench.quality import QualityResult
from crdtool.bench.report import Speedup, render_table
from crdtool.deploy.export import ExportResult
from crdtool.profile import (
    CONVENTIONS,
    DEFAULT_CONVENTION,
    Comparison,
    ModelProfile,
    format_macs,
    format_params,
    format_ratio,
    format_shape,
)


# ---------------------------------------------------------------- distill

def resume_command(result) -> str:
    """The command that continues this run: its own folder, whose recipe.toml holds every ``--set``."""
    return f"crdtool distill {shlex.quote(str(result.run_dir))} --resume"


def print_distill_result(console: Console, recipe, result, resume_hint: str | None = None) -> None:
    """Summary of a run; ``resume_hint`` replaces the default resume command after an interrupt."""
    if result.already_finished:
        console.print(f"{result.run_dir} has already finished (step {result.steps}, {result.student_steps} student "
                      f"steps); nothing was changed. To train further, raise train.max_steps "
                      f"(--set train.max_steps=N) or start a new run.", highlight=False, soft_wrap=True)
        return
    if result.interrupted:
        console.print(f"[yellow]interrupted[/] at step {result.steps}; checkpoint written. Resume with: "
                      f"{resume_hint or resume_command(result)}", highlight=False, soft_wrap=True)
    start = result.resumed_from or 0
    done = result.steps - start
    rate = f", {done / result.seconds:.2f} steps/s on average" if result.seconds > 0 and done > 0 else ""
    span = f"steps {start} -> {result.steps}" if result.resumed_from is not None else f"{result.steps} steps"
    console.print(f"distill {recipe.name}: {span} ({result.student_steps} student) in {result.seconds:.0f} s{rate}",
                  style="bold", markup=False, highlight=False)
    table = Table()
    table.add_column("student vs teacher")
    table.add_column("PSNR (dB)", justify="right")
    table.add_column("SSIM", justify="right")
    first, last = result.first_eval, result.last_eval
    rows = []
    if first:
        where = "start" if first["step"] == 0 else f"first evaluation after resuming at step {start}"
        rows.append((f"step {first['step']} ({where})", first))
    if last and (not first or last["step"] != first["step"]):
        where = "last evaluation before the interrupt" if result.interrupted else "end"
        rows.append((f"step {last['step']} ({where})", last))
    for label, ev in rows:
        table.add_row(label, f"{ev['psnr_db']:.2f}", f"{ev['ssim']:.4f}")
    if rows:
        console.print(table)
    if len(rows) < 2:
        since = f"since step {rows[0][1]['step']}" if rows else f"in this run (resumed at step {start})"
        console.print(f"no evaluation {since} (one every train.eval_every = {recipe.train.eval_every} student steps)",
                      highlight=False)
    console.print(f"student: {result.student_path}\nteacher: {result.teacher_path}\n"
                  f"metrics: {result.run_dir / 'metrics.jsonl'}\nsamples: {result.run_dir / 'samples'}",
                  highlight=False)



# ---------------------------------------------------------------- profile


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


# ---------------------------------------------------------------- export

def _size(n: int) -> str:
    if n <= 0:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def render_export_result(result: ExportResult, console: Console) -> None:
    """Parity table + where the verification inputs came from; also used by ``crdtool quickstart``."""
    shape = f"{result.input_shape[2]}x{result.input_shape[3]}" + (" (dynamic)" if result.dynamic else "")
    table = Table(title=f"export of {escape(result.source.name)} at {shape} vs PyTorch fp32", title_justify="left")
    for col, just in (("artifact", "left"), ("backend", "left"), ("max abs", "right"), ("PSNR dB", "right"),
                      ("size", "right"), ("status", "left")):
        table.add_column(col, justify=just, no_wrap=col != "status")  # type: ignore[arg-type]
    for row in result.rows:
        p = row.parity
        psnr = "-" if p is None else ("inf" if math.isinf(p.psnr_db) else f"{p.psnr_db:.1f}")
        style = "green" if row.status == "ok" else ("yellow" if row.status.startswith(("ok", "skipped")) else "red")
        status = "skipped" if row.status.startswith("skipped") else row.status
        table.add_row(escape(row.artifact), row.backend.replace("-cpu", ""), "-" if p is None else f"{p.max_abs:.2e}", psnr,
                      _size(row.bytes), f"[{style}]{escape(status)}[/]")
    console.print(table)
    n = result.rows[0].parity.n_images if result.rows and result.rows[0].parity else 0
    if result.synthetic:
        console.print(f"[yellow]verified on {n} SYNTHETIC images[/] (no real images found; pass --images FOLDER)")
    else:
        console.print(f"verified on {n} images from {escape(result.verification)}")
    if result.calibration:
        console.print(f"INT8 calibrated on {escape(result.calibration)}")
    for note in result.notes:
        if "SYNTHETIC" not in note:
            console.print(f"[yellow]note:[/] {escape(note)}")
    if result.kept:
        fresh = [n for n in result.kept if n not in result.stale]
        if fresh:
            console.print(f"kept from an earlier export (not rebuilt, still listed): {escape(', '.join(fresh))}")
    for name, reason in result.stale.items():
        console.print(f"[yellow]stale:[/] {escape(name)} kept but marked stale in the manifest: {escape(reason)}; "
                      f"rebuild it or delete it")
    console.print(f"manifest: {escape(str(result.manifest))}")



# ---------------------------------------------------------------- bench

def print_bench(console: Console, results: Sequence[LatencyResult], comparisons: Sequence[Speedup] = (),
                quality: Sequence[QualityResult] = (), title: str = "crdtool bench", notes: Sequence[str] = ()) -> None:
    """Latency (and quality) table of a bench run."""
    console.print(render_table(results, comparisons, quality, title, notes))
