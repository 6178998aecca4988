"""Teacher (resnet ngf64) vs student (mobile_resnet ngf16) latency at 1x3x256x256 on this machine's CPU.

Backends: PyTorch eager fp32, onnxruntime fp32 and onnxruntime INT8 (static symmetric QDQ, calibrated on
real images). Each (model, backend) is measured in its own process by ``crdtool.bench``; the speed-up is
teacher median / student median from the same run. Writes ``latency-cpu.json``, ``.md`` and ``.png``
(each records this command, the CPU, threads, library versions and the load average at start).

    python benchmarks/latency_cpu.py                      # 200 runs, at most 60 s per measurement
    python benchmarks/latency_cpu.py --runs 50 --max-seconds 10 --out runs/quick-bench

Weights: random (pix2pix init) unless --teacher/--student name checkpoints; latency does not depend
on weight values, INT8 fidelity does (with random weights it only shows that quantization works).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cat2dog"
TARGET_STUDENT_MS = 25.0
TARGET_RATIO = 40.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200, help="timed runs per measurement (at most)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time budget per measurement (slow teacher)")
    p.add_argument("--warmup", default="auto", help="runs (50), seconds (1s) or auto (50 runs or 1 s)")
    p.add_argument("--threads", type=int, default=None, help="default: physical cores")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint (default: random resnet ngf64)")
    p.add_argument("--student", type=Path, default=None,
                   help="student checkpoint (default: random mobile_resnet ngf16)")
    p.add_argument("--images", type=Path, default=DATA / "testA" if (DATA / "testA").is_dir() else None,
                   help="real images used as inputs (default: shared cat2dog testA when present)")
    p.add_argument("--calib", type=Path, default=DATA / "trainA" if (DATA / "trainA").is_dir() else None,
                   help="INT8 calibration images (default: shared cat2dog trainA when present)")
    p.add_argument("--calib-images", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="latency-cpu", help="output file stem")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Path]]:
    """Checkpoints, fp32 ONNX and INT8 QDQ ONNX for teacher and student."""
    import torch

    from crdtool.data.synth import smooth_noise_images
    from crdtool.data.images import load_folder_tensor
    from crdtool.deploy.onnx import export_onnx
    from crdtool.deploy.optimize import optimize_for_cpu
    from crdtool.deploy.quantize import quantize_int8_qdq
    from crdtool.models.checkpoints import load_generator, save_generator
    from crdtool.models.registry import build_generator

    torch.manual_seed(0)
    calib = (load_folder_tensor(args.calib, args.size, args.calib_images) if args.calib
             else smooth_noise_images(args.calib_images, args.size))
    out = {}
    for role, given, default in (("teacher", args.teacher, ("resnet", 64)), ("student", args.student,
                                                                              ("mobile_resnet", 16))):
        ckpt = given or save_generator(build_generator(*default), work / f"{role}.safetensors")
        model = load_generator(ckpt)
        fp32 = optimize_for_cpu(export_onnx(model, work / f"{role}.onnx", input_shape=(1, 3, args.size, args.size)),
                                work / f"{role}.onnx")
        int8 = quantize_int8_qdq(fp32, work / f"{role}-int8.onnx", calib)
        out[role] = {"ckpt": Path(ckpt), "fp32": fp32, "int8": int8, "label": f"{role} {model.spec.describe()}"}
    return out


def main(argv: list[str]) -> int:
    from crdtool.bench.env import current_command, load_avg
    from crdtool.bench.latency import BenchSpec, bench_artifacts
    from crdtool.bench.report import bench_document, markdown_report, plot_latency_vs_macs, speedups
    from crdtool.fileio import write_bytes_atomic, write_json_atomic

    args = parse_args(argv)
    command = current_command()
    load_start = load_avg()
    common = dict(batch=1, size=args.size, warmup=args.warmup, runs=args.runs, max_seconds=args.max_seconds,
                  threads=args.threads, images=str(args.images) if args.images else None)
    with tempfile.TemporaryDirectory(prefix="crdtool-latency-cpu-") as tmp:
        print("exporting ONNX and calibrating INT8...", file=sys.stderr)
        m = prepare(args, Path(tmp))
        specs = []
        for role in ("teacher", "student"):
            r = m[role]
            specs += [BenchSpec(str(r["ckpt"]), "torch-cpu", name=r["label"], **common),
                      BenchSpec(str(r["fp32"]), "ort-cpu", name=r["label"], reference=str(r["ckpt"]), **common),
                      BenchSpec(str(r["int8"]), "ort-cpu", name=r["label"], reference=str(r["ckpt"]), **common)]
        results = bench_artifacts(specs, isolate=True, command=command,
                                  on_start=lambda s: print(f"measuring {s.name} {Path(s.artifact).name} on "
                                                           f"{s.backend}...", file=sys.stderr))
    for r in results:  # the temporary files are gone; say what they were
        r.artifact = Path(r.artifact).name
        if r.fidelity and r.fidelity.get("reference"):
            r.fidelity["reference"] = Path(r.fidelity["reference"]).name
    teacher = [r for r in results if r.name.startswith("teacher")]
    student = [r for r in results if r.name.startswith("student")]
    comps = speedups(teacher, student)
    doc = bench_document(results, comps, command=command, load_avg_start=load_start,
                         notes=notes(results, comps, args, load_start))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.name
    write_json_atomic(stem.with_suffix(".json"), doc)
    write_bytes_atomic(stem.with_suffix(".md"), markdown_report(doc, "CPU latency: teacher vs student").encode())
    plot_latency_vs_macs(results, stem.with_suffix(".png"), title=f"1x3x{args.size}x{args.size}, `{command}`")
    print(markdown_report(doc, "CPU latency: teacher vs student"))
    return 1 if any(not r.ok for r in results) else 0


def notes(results, comps, args, load_start) -> list[str]:
    from crdtool.bench.env import load_avg

    out = []
    by = {(r.name.split()[0], r.backend, r.precision): r for r in results if r.ok}
    s32, s8 = by.get(("student", "ort-cpu", "fp32")), by.get(("student", "ort-cpu", "int8"))
    if s32:
        met = "met" if s32.median_ms <= TARGET_STUDENT_MS else "NOT met"
        out.append(f"target: student onnxruntime fp32 median <= {TARGET_STUDENT_MS:g} ms: "
                   f"{s32.median_ms:.2f} ms ({met})")
    for c in comps:
        met = "met" if c.ratio >= TARGET_RATIO else "NOT met"
        out.append(f"target: teacher/student >= {TARGET_RATIO:g}x on {c.backend} {c.precision}: {c.ratio:.1f}x ({met})")
    if s32 and s8:
        verdict = "slower" if s8.median_ms > s32.median_ms else "faster"
        out.append(f"INT8 is {verdict} than fp32 for the student on this CPU: {s8.median_ms:.2f} ms vs "
                   f"{s32.median_ms:.2f} ms median")
    if not args.teacher or not args.student:
        out.append("weights: random (pix2pix normal init) where no checkpoint was given; INT8 fidelity therefore "
                   "only shows that the quantized graph tracks its fp32 model")
    out.append(f"load average at start {load_start}, at end {load_avg()} (other processes share this CPU when "
               "it is above ~0.5)")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
