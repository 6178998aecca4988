"""``crdtool export``: thin CLI over ``crdtool.deploy.export.export_artifacts`` plus the parity table."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crdtool.commands.common import console, err_console, fail
from crdtool.deploy.export import ExportResult, export_artifacts
from crdtool.errors import CrdError


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
    console.print(f"manifest: {escape(str(result.manifest))}")


def export(
    source: str = typer.Argument(..., help="Run folder (its student.safetensors) or a generator file."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Keep the fp32 ONNX graph (always built and verified)."),
    int8_cpu: bool = typer.Option(False, "--int8-cpu", help="Static INT8 QDQ graph for onnxruntime (and TensorRT)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 graph with float32 I/O; with --trt: an FP16 engine."),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine (needs TensorRT and a GPU)."),
    int8: bool = typer.Option(False, "--int8", help="With --trt: build the engine from the INT8 QDQ graph."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Symbolic batch/height/width (default: fixed 1x3xSxS)."),
    size: Optional[int] = typer.Option(None, "--size", help="Input side; default: the recipe's crop_size, else 256."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of real inputs for verification."),
    calib_images: int = typer.Option(64, "--calib-images", help="Training images used for INT8 calibration."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder (default RUN/export/)."),
    workspace_gb: float = typer.Option(2.0, "--workspace-gb", help="TensorRT builder workspace limit (GiB)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON instead of the table."),
) -> None:
    """Export a distilled generator to ONNX / INT8 / FP16 / TensorRT, verified against PyTorch."""
    try:
        if int8 and not trt:
            raise CrdError("--int8 picks the TensorRT precision and needs --trt (for onnxruntime use --int8-cpu)")
        if trt and int8 and fp16:
            raise CrdError("--trt takes one precision: --fp16 or --int8, not both")
        precision = ("int8" if int8 else "fp16" if fp16 else "fp32") if trt else None
        with err_console.status("exporting and verifying...") if not json_out else contextlib.nullcontext():
            result = export_artifacts(source, out, onnx=onnx, int8_cpu=int8_cpu, fp16=fp16, trt=precision,
                                      dynamic=dynamic, size=size, images=images, calib_images=calib_images,
                                      workspace_gb=workspace_gb)
    except CrdError as e:
        fail(str(e))
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        render_export_result(result, console)
    if result.trt_message:
        produced = ", ".join(p.name for p in result.artifacts.values()) or "nothing"
        err_console.print(f"[yellow]--trt skipped:[/] {escape(result.trt_message)}; produced: {escape(produced)}",
                  soft_wrap=True)
        raise typer.Exit(1)

