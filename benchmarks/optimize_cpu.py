"""A/B of ``crdtool.deploy.optimize`` in onnxruntime on this CPU: exported graph vs optimised graph.

For the teacher (resnet ngf64) and the student (mobile_resnet ngf16) at 1x3x256x256: fp32 parity of both
graphs against PyTorch, then interleaved timing (A, B, A, B ...) under three session settings, and a
single-thread per-op-type profile of the student. Writes ``optimize-cpu.json`` and ``.md``.

    python benchmarks/optimize_cpu.py                     # 60 student / 6 teacher runs per cell and round
    python benchmarks/optimize_cpu.py --rounds 2 --student-runs 10 --teacher-runs 1 --out runs/quick-bench

"1 thread, CPU time" is the calling thread's CPU time with intra_op_num_threads=1: it ignores time lost to
other processes, so it is the number to compare on a shared machine. The two-thread rows are wall clock.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cat2dog" / "testA"
FORMAT_VERSION = 1
SETTINGS = {  # name: (intra_op threads, allow spinning, clock)
    "1 thread, CPU time": (1, "0", "cpu"),
    "2 threads, spinning, wall": (2, "1", "wall"),
    "2 threads, no spinning, wall": (2, "0", "wall"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--student-runs", type=int, default=60, help="timed student runs per cell and round")
    p.add_argument("--teacher-runs", type=int, default=6, help="timed teacher runs per cell and round")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--images", type=Path, default=DATA if DATA.is_dir() else None,
                   help="parity images (default: shared cat2dog testA when present, else synthetic)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="optimize-cpu")
    return p.parse_args(argv)


def session(path: Path, threads: int, spin: str, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def timed(sess, x: np.ndarray, runs: int, clock: str) -> list[float]:
    name = sess.get_inputs()[0].name
    out = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        sess.run(None, {name: x})
        out.append((time.thread_time() - c0) if clock == "cpu" else (time.perf_counter() - t0))
    return out


def op_profile(path: Path, x: np.ndarray, runs: int, tmp: Path) -> dict[str, float]:
    """Share of kernel time per op type (1 thread), in %: shares are robust to a shared CPU."""
    sess = session(path, 1, "0", str(tmp / f"prof-{path.stem}"))
    for _ in range(runs):
        sess.run(None, {"input": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    by: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by[e["args"]["op_name"]] += e["dur"]
    total = sum(by.values()) or 1.0
    return {k: round(100 * v / total, 1) for k, v in sorted(by.items(), key=lambda kv: -kv[1])}


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms) * 1e3
    return {"median_ms": round(float(np.median(a)), 2), "min_ms": round(float(a.min()), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2), "runs": int(a.size)}


def main(argv: list[str]) -> int:
    import torch

    from crdtool.bench.env import cpu_info, current_command, library_versions, load_avg
    from crdtool.data.synth import smooth_noise_images
    from crdtool.data.images import load_folder_tensor
    from crdtool.deploy import onnx as donnx
    from crdtool.deploy.optimize import DEFAULT_REWRITES, optimize_for_cpu
    from crdtool.fileio import write_bytes_atomic, write_json_atomic
    from crdtool.models import build_generator

    args = parse_args(argv)
    load_start = load_avg()
    torch.manual_seed(0)
    images = (load_folder_tensor(args.images, args.size, 8) if args.images else smooth_noise_images(8, args.size))
    x = images[:1].numpy()
    doc = {"format_version": FORMAT_VERSION, "command": current_command(), "created": time.strftime("%FT%T%z"),
           "cpu": cpu_info(), "versions": library_versions(), "rewrites": list(DEFAULT_REWRITES),
           "input_shape": [1, 3, args.size, args.size], "parity_images": str(args.images or "synthetic"),
           "models": {}}
    with tempfile.TemporaryDirectory(prefix="crdtool-optimize-cpu-") as tmp_s:
        tmp = Path(tmp_s)
        graphs = {}
        for role, (family, ngf), runs in (("student", ("mobile_resnet", 16), args.student_runs),
                                          ("teacher", ("resnet", 64), args.teacher_runs)):
            print(f"exporting and optimising the {role}...", file=sys.stderr)
            model = build_generator(family, ngf)
            base = donnx.export_onnx(model, tmp / f"{role}.onnx", (1, 3, args.size, args.size))
            opt = optimize_for_cpu(base, tmp / f"{role}.opt.onnx")
            ref = donnx.reference_outputs(model, images)
            outs = {k: donnx.run_onnx(p, images) for k, p in (("exported", base), ("optimised", opt))}
            parity = {k: donnx.measure_parity(ref, o).to_dict() for k, o in outs.items()}
            graphs[role] = (base, opt, runs)
            doc["models"][role] = {"generator": f"{family} ngf{ngf}", "parity_vs_pytorch": parity,
                                   "optimised_vs_exported_max_abs": float(np.abs(outs["optimised"] -
                                                                                 outs["exported"]).max()),
                                   "timing": {}}
        for role, (base, opt, runs) in graphs.items():
            print(f"timing the {role} ({args.rounds} interleaved rounds)...", file=sys.stderr)
            sessions = {(v, s): session(p, th, spin) for v, p in (("exported", base), ("optimised", opt))
                        for s, (th, spin, _) in SETTINGS.items()}
            times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
            for sess in sessions.values():
                timed(sess, x, 2, "wall")  # warm-up
            for _ in range(args.rounds):
                for (variant, setting), sess in sessions.items():
                    times[(variant, setting)] += timed(sess, x, runs, SETTINGS[setting][2])
            for setting in SETTINGS:
                doc["models"][role]["timing"][setting] = {v: stats(times[(v, setting)]) for v in ("exported",
                                                                                                 "optimised")}
        print("profiling the student...", file=sys.stderr)
        base, opt, _ = graphs["student"]
        doc["student_op_share_pct_1_thread"] = {"exported": op_profile(base, x, 20, tmp),
                                                "optimised": op_profile(opt, x, 20, tmp)}
    doc["load_avg"] = {"start": load_start, "end": load_avg()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.name
    write_json_atomic(stem.with_suffix(".json"), doc)
    text = markdown(doc)
    write_bytes_atomic(stem.with_suffix(".md"), text.encode())
    print(text)
    return 0


def markdown(doc: dict) -> str:
    lines = ["# onnxruntime CPU: exported vs optimised graph", "",
             f"Command: `{doc['command']}`", "",
             f"Created {doc['created']} on {doc['cpu']['cpu']} ({doc['cpu']['logical_cpus']} CPUs, "
             f"{', '.join(doc['cpu']['cpu_flags'])}); load average at start {doc['load_avg']['start']}, "
             f"at end {doc['load_avg']['end']}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()), "",
             f"Rewrites: {', '.join(doc['rewrites'])}; input {'x'.join(map(str, doc['input_shape']))}; "
             f"parity images: {doc['parity_images']}.", "",
             "| model | setting | exported median | optimised median | exported min | optimised min | gain |",
             "|---|---|---|---|---|---|---|"]
    for role, m in doc["models"].items():
        for setting, t in m["timing"].items():
            a, b = t["exported"], t["optimised"]
            gain = 100 * (a["median_ms"] - b["median_ms"]) / a["median_ms"]
            lines.append(f"| {role} {m['generator']} | {setting} | {a['median_ms']} ms | {b['median_ms']} ms | "
                         f"{a['min_ms']} ms | {b['min_ms']} ms | {gain:+.1f}% |")
    lines += ["", "| model | graph | max abs vs PyTorch | PSNR dB | max abs vs the exported graph |",
              "|---|---|---|---|---|"]
    for role, m in doc["models"].items():
        for variant, p in m["parity_vs_pytorch"].items():
            own = "-" if variant == "exported" else f"{m['optimised_vs_exported_max_abs']:.2e}"
            lines.append(f"| {role} | {variant} | {p['max_abs']:.2e} | {p['psnr_db']} | {own} |")
    shares = doc["student_op_share_pct_1_thread"]
    ops = list(dict.fromkeys([*shares["exported"], *shares["optimised"]]))
    lines += ["", "Student kernel time by op type (1 thread, % of the graph's total):", "",
              "| op | exported | optimised |", "|---|---|---|"]
    lines += [f"| {op} | {shares['exported'].get(op, 0)}% | {shares['optimised'].get(op, 0)}% |" for op in ops]
    lines += ["", "- '1 thread, CPU time' is the calling thread's CPU time (intra_op_num_threads=1): it is not "
              "inflated by other processes, so it compares graphs on a shared CPU; the other rows are wall clock.",
              "- Weights are random (pix2pix init); latency does not depend on them.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
