"""``crdtool export``: thin CLI over ``crdtool.deploy.export.export_artifacts`` plus the parity table."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from crdtool.commands.common import console, err_console, fail
from crdtool.commands.tables import render_export_result
from crdtool.deploy.export import export_artifacts
from crdtool.errors import CrdError


def export(
    source: str = typer.Argument(..., metavar="RUN|FILE",
                                 help="Run folder (its student.safetensors) or a generator file."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Keep the fp32 ONNX graph (always built and verified)."),
    int8_cpu: bool = typer.Option(False, "--int8-cpu", help="Static INT8 QDQ graph for onnxruntime (and TensorRT); "
                                  "with --openvino / --executorch also their int8 (NNCF / XNNPACK)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 graph with float32 I/O; with --trt: an FP16 engine."),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine (needs TensorRT and a GPU)."),
    openvino: bool = typer.Option(False, "--openvino", help="OpenVINO IR (.xml + .bin) for its CPU plugin."),
    executorch: bool = typer.Option(False, "--executorch", help="ExecuTorch program (.pte), XNNPACK delegate."),
    ncnn: bool = typer.Option(False, "--ncnn", help="ncnn model (.ncnn.param + .ncnn.bin) converted by pnnx."),
    int8: bool = typer.Option(False, "--int8", help="With --trt: build the engine from the INT8 QDQ graph."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Symbolic batch/height/width (default: fixed 1x3xSxS)."),
    size: Optional[int] = typer.Option(None, "--size", help="Input side; default: the run's crop_size, else 256 "
                                       "(SR: the LR side a TensorRT profile is tuned for; default 320x180)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of real inputs for verification (SR: LR "
                                          "images, or an SR set folder with HR/)."),
    calib_images: int = typer.Option(64, "--calib-images", help="Training images used for INT8 calibration."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder (default RUN/export/)."),
    workspace_gb: float = typer.Option(2.0, "--workspace-gb", help="TensorRT builder workspace limit (GiB)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON instead of the table."),
) -> None:
    """Export a distilled generator to ONNX / INT8 / FP16 / TensorRT, verified against PyTorch.

    A super-resolution generator gets dynamic graphs (any LR size) verified by PSNR-Y on whole LR images;
    --images takes an SR set folder or a folder of LR images, --size the typical LR side of a TensorRT profile.
    """
    from crdtool.deploy.sr import export_sr, is_sr_source

    try:
        if int8 and not trt:
            raise CrdError("--int8 picks the TensorRT precision and needs --trt (for onnxruntime use --int8-cpu)")
        if trt and int8 and fp16:
            raise CrdError("--trt takes one precision: --fp16 or --int8, not both")
        precision = ("int8" if int8 else "fp16" if fp16 else "fp32") if trt else None
        with err_console.status("exporting and verifying...") if not json_out else contextlib.nullcontext():
            if is_sr_source(source):
                if openvino or executorch or ncnn:
                    raise CrdError("a super-resolution generator exports to ONNX (fp32, --fp16, --int8-cpu) and "
                                   "TensorRT only; drop --openvino / --executorch / --ncnn")
                result = export_sr(source, out, onnx=onnx, fp16=fp16, int8=int8_cpu, trt=precision, images=images,
                                   calib_images=calib_images, lr_size=size, workspace_gb=workspace_gb)
            else:
                result = export_artifacts(source, out, onnx=onnx, int8_cpu=int8_cpu, fp16=fp16, trt=precision,
                                          dynamic=dynamic, size=size, images=images, calib_images=calib_images,
                                          workspace_gb=workspace_gb, openvino=openvino, executorch=executorch,
                                          ncnn=ncnn)
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
