"""Edge runtimes side by side on this CPU: torch, onnxruntime, OpenVINO, ExecuTorch (XNNPACK), ncnn; fp32 and int8.

Every model is exported by ``crdtool export`` (``export_artifacts`` with --onnx --int8-cpu --openvino
--executorch --ncnn), so every artifact timed here passed the same parity check against PyTorch on real
images, recorded in its manifest. Then, in rounds, each backend x precision measures the teacher and the
students back to back (each in its own process, via ``crdtool.bench``), the order reversed every round.
The CPU is shared, so only numbers from the same round are compared: the teacher/student ratio is taken
per round and its median reported. Each measurement records the load average when it started and the
dense fp32 matmul rate probed in the same run (the compute floor).

Models: the teacher is the real vintagify CycleGAN generator (resnet ngf64, affine InstanceNorm) when
`crdtool weights get vintagify` has cached it, else a random-weight resnet ngf64; the student is a
random-weight mobile_resnet ngf16; a real distilled student (benchmarks/results/real_teacher/*-seed0.safetensors)
is added when present, and a searched student (``--searched runs/vintage-search/arch.json``, random
weights). Latency does not depend on weight values; int8 fidelity does.

    python benchmarks/edge_cpu.py                       # 2 rounds, writes benchmarks/results/edge_cpu.{json,md,png}
    python benchmarks/edge_cpu.py --rounds 1 --student-runs 10 --out runs/edge_quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "photo2anime"
REAL_STUDENTS = ROOT / "benchmarks" / "results" / "real_teacher"
TARGET_STUDENT_MS = 18.0
TARGET_RATIO = 35.0
TARGET_INT8_PSNR = 35.0
# (backend, precision, artifact kind in the manifest; None = the checkpoint itself)
CONFIGS = [("torch-cpu", "fp32", None), ("ort-cpu", "fp32", "onnx-fp32"), ("ort-cpu", "int8", "onnx-int8-qdq"),
           ("openvino", "fp32", "openvino-fp32"), ("openvino", "int8", "openvino-int8"),
           ("executorch", "fp32", "pte-fp32"), ("executorch", "int8", "pte-int8"), ("ncnn", "fp32", "ncnn-fp32")]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="dataset root with testA (inputs, parity, calibration)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--student-runs", type=int, default=40)
    p.add_argument("--teacher-runs", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=8.0, help="time budget per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--verify-images", type=int, default=16,
                   help="testA photos each artifact is checked on against PyTorch (parity, int8 PSNR)")
    p.add_argument("--real-student", type=Path, default=None, help="default: the first real_teacher/*-seed0 file")
    p.add_argument("--no-teacher-int8", action="store_true", help="skip the teacher's int8 exports (slow)")
    p.add_argument("--work", type=Path, default=None,
                   help="keep exports here and reuse the ones already there (default: a temporary folder)")
    p.add_argument("--searched", type=Path, default=None,
                   help="a `crdtool search` arch.json: adds model student-searched (random weights)")
    p.add_argument("--models", default="teacher,student,student-real,student-searched", help="comma-separated subset")
    p.add_argument("--export-only", action="store_true", help="export into --work and stop (to export in parallel)")
    p.add_argument("--part", choices=("all", "no-executorch", "executorch"), default="all",
                   help="with --export-only: which artifacts (the ExecuTorch lowering is the slow one)")
    p.add_argument("--from-partial", action="store_true",
                   help="write the reports from the measurements an interrupted run saved (OUT/NAME.partial.json)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="edge_cpu")
    return p.parse_args(argv)


def models(args: argparse.Namespace, work: Path) -> dict[str, tuple[Path, str]]:
    """name -> (checkpoint, description)."""
    import torch

    from crdtool import weights
    from crdtool.models.checkpoints import save_generator
    from crdtool.models.registry import build_generator

    torch.manual_seed(0)
    out: dict[str, tuple[Path, str]] = {}
    vintagify = weights.cached_path("vintagify")
    if vintagify is not None:
        out["teacher"] = (vintagify, "vintagify CycleGAN resnet ngf64 (real weights, affine IN)")
    else:
        if not (work / "teacher.safetensors").is_file():  # kept, so exports in --work stay valid
            save_generator(build_generator("resnet", 64), work / "teacher.safetensors")
        out["teacher"] = (work / "teacher.safetensors", "resnet ngf64 (random weights)")
    student = build_generator("mobile_resnet", 16)
    if not (work / "student.safetensors").is_file():
        save_generator(student, work / "student.safetensors")
    out["student"] = (work / "student.safetensors", "mobile_resnet ngf16 (random weights)")
    if args.searched is not None:
        from crdtool.models.sr_student import load_arch_spec

        spec = load_arch_spec(args.searched)
        ckpt = work / "student-searched.safetensors"
        if not ckpt.is_file():
            save_generator(build_generator(spec), ckpt)
        out["student-searched"] = (ckpt, f"searched by crdtool search ({Path(args.searched).name}, random weights)")
    real = args.real_student or next(iter(sorted(REAL_STUDENTS.glob("*-seed0.safetensors"))), None)
    if real is not None and Path(real).is_file():
        out["student-real"] = (Path(real), f"distilled student {Path(real).stem} (real weights)")
    return out


def export_all(name: str, ckpt: Path, work: Path, args: argparse.Namespace, int8: bool) -> dict[str, Any]:
    """Export (or reuse from --work) every artifact of one model; the ExecuTorch part may live in NAME-executorch/."""
    from crdtool.deploy.export import export_artifacts
    from crdtool.errors import CrdError

    folders = {"all": [name], "no-executorch": [name], "executorch": [f"{name}-executorch"]}[args.part]
    if not args.export_only:
        # measure what was exported into --work; a part still being exported in parallel is picked up later
        folders = [f for f in (name, f"{name}-executorch") if (work / f / "manifest.json").is_file()]
    out: dict[str, Any] = {"files": {}, "parity": {}, "notes": {}, "export_seconds": {}, "refused": {}}
    for folder in folders:
        mf = work / folder / "manifest.json"
        refused = work / folder / "refused.txt"  # an export the parity gate refused: recorded, not retried
        if refused.is_file():
            out["refused"][folder] = refused.read_text().strip()
            continue
        if not mf.is_file():
            t0 = time.perf_counter()
            et_only = folder.endswith("-executorch")
            # the teacher's XNNPACK int8 is left out: its PT2E calibration + lowering alone took > 20 min here
            try:
                res = export_artifacts(ckpt, work / folder, onnx=not et_only,
                                       int8_cpu=int8 and not (et_only and name == "teacher"),
                                       openvino=not et_only, executorch=args.part != "no-executorch",
                                       ncnn=not et_only, size=args.size, images=args.data / "testA",
                                       calib_images=args.calib_images, verify_images=args.verify_images)
            except CrdError as e:
                print(f"export of {folder} refused: {e}", flush=True)
                refused.parent.mkdir(parents=True, exist_ok=True)
                refused.write_text(str(e) + "\n")
                out["refused"][folder] = str(e)
                continue
            print(f"exported {folder} in {time.perf_counter() - t0:.0f} s: "
                  + ", ".join(f"{r.artifact} ({r.status})" for r in res.rows), flush=True)
            manifest = json.loads(res.manifest.read_text())
            manifest["export_seconds"] = round(time.perf_counter() - t0, 1)
            mf.write_text(json.dumps(manifest, indent=1))
        manifest = json.loads(mf.read_text())
        out["export_seconds"][folder] = manifest.get("export_seconds")
        for a in manifest["artifacts"]:
            out["files"][a["kind"]] = str(work / folder / a["file"])
            out["parity"][a["kind"]] = a["parity"]
            out["notes"][a["kind"]] = {k: v for k, v in a.get("notes", {}).items()
                                       if k in ("rewrites", "xnnpack_subgraphs", "undelegated_ops", "precision",
                                                "calibration_images", "method", "quantizer")}
    return out


def measure(spec_args: dict[str, Any]) -> Any:
    from crdtool.bench.latency import BenchSpec, bench_artifacts

    return bench_artifacts([BenchSpec(**spec_args)], isolate=True, timeout_s=600)[0]


def sanitize(obj: Any, work: Path) -> Any:
    """No absolute paths of this machine in results: repo-relative, '<work>/' for temporary files, '~'."""
    if isinstance(obj, str):
        for prefix, short in ((str(work), "<work>"), (str(ROOT.parent / "shared"), "../shared"),
                              (str(ROOT) + "/", ""), (str(Path.home()), "~")):
            obj = obj.replace(prefix, short)
        return obj
    if isinstance(obj, dict):
        return {k: sanitize(v, work) for k, v in obj.items()}
    if isinstance(obj, list):
        return [sanitize(v, work) for v in obj]
    return obj


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from crdtool.bench.env import cpu_info, current_command, library_versions, load_avg
    from crdtool.bench.latency import LatencyResult
    from crdtool.bench.report import floor_fraction, floor_ms, plot_latency_vs_macs
    from crdtool.deploy import executorch as et
    from crdtool.models.checkpoints import load_generator

    if not (args.data / "testA").is_dir():
        print(f"error: no real images at {args.data / 'testA'} (pass --data)", file=sys.stderr)
        return 2
    command = current_command()
    started, load_start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), load_avg()
    versions = library_versions()
    from importlib import metadata

    for pkg in ("openvino", "nncf", "executorch", "torchao", "ncnn", "pnnx"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"

    with tempfile.TemporaryDirectory(prefix="crdtool-edge-") as tmp:
        work = args.work.resolve() if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        wanted = set(args.models.split(","))
        found = {k: v for k, v in models(args, work).items() if k in wanted}
        exports = {name: export_all(name, ckpt, work, args, int8=not (name == "teacher" and args.no_teacher_int8))
                   for name, (ckpt, _) in found.items()}
        # the ExecuTorch rewrite measured alone: the student lowered without it
        extra, raw_info = [], None
        if "student" in found and (not args.export_only or args.part == "all"):
            raw = work / "student-no-rewrite" / "student.pte"
            raw.parent.mkdir(exist_ok=True)
            info_file = raw.with_suffix(".json")
            if info_file.is_file() and raw.is_file():
                raw_info = json.loads(info_file.read_text())
            else:
                raw_info = et.export_pte(load_generator(found["student"][0]), raw, (1, 3, args.size, args.size),
                                         rewrite=False).to_dict()
                info_file.write_text(json.dumps(raw_info))
            extra = [("executorch", "fp32", "student (no XNNPACK rewrite)", str(raw), str(found["student"][0]))]
        if args.export_only:
            return 0

        rows: list[dict[str, Any]] = []
        args.out.mkdir(parents=True, exist_ok=True)
        partial = args.out / f"{args.name}.partial.json"
        if args.from_partial:
            saved = json.loads(partial.read_text())
            rows, command = saved, command + " (reports from the measurements of the interrupted run)"
            started = "see the measurements' 'started'"
        rounds = 0 if args.from_partial else args.rounds
        for rnd in range(rounds):
            order = CONFIGS if rnd % 2 == 0 else list(reversed(CONFIGS))
            for backend, prec, kind in order:
                names = list(found) if rnd % 2 == 0 else list(reversed(list(found)))
                for name in names:
                    ckpt = found[name][0]
                    if kind is not None and kind not in exports[name]["files"]:  # a parallel export may have landed
                        exports[name] = export_all(name, ckpt, work, args, int8=True)
                    artifact = str(ckpt) if kind is None else exports[name]["files"].get(kind)
                    if artifact is None:
                        continue
                    teacher = name == "teacher"
                    r = measure({"artifact": artifact, "backend": backend, "size": args.size,
                                 "threads": args.threads, "images": str(args.data / "testA"),
                                 "runs": args.teacher_runs if teacher else args.student_runs,
                                 "warmup": "2" if teacher else "auto", "max_seconds": args.max_seconds,
                                 "reference": str(ckpt), "fidelity_images": 0, "name": name})
                    rows.append({"round": rnd, "model": name, "backend": backend, "precision": prec,
                                 "result": r.to_dict(with_times=False)})
                    partial.write_text(json.dumps(sanitize(rows, work)) + "\n")  # survives an interrupted run
                    print(f"round {rnd} {name:13s} {backend:10s} {prec}: "
                          + (f"{r.median_ms:.1f} ms" if r.ok else f"error {r.error}")
                          + f" (load {r.load_avg}, probe {r.fma_gmacs_per_s} GMAC/s)", flush=True)
                if backend == "executorch" and prec == "fp32":
                    for be, pr, name, art, ref in extra:
                        r = measure({"artifact": art, "backend": be, "size": args.size, "threads": args.threads,
                                     "images": str(args.data / "testA"), "runs": args.student_runs,
                                     "max_seconds": args.max_seconds, "reference": ref, "fidelity_images": 0,
                                     "name": name})
                        rows.append({"round": rnd, "model": name, "backend": be, "precision": pr,
                                     "result": r.to_dict(with_times=False)})
                        print(f"round {rnd} {name}: " + (f"{r.median_ms:.1f} ms" if r.ok else f"error {r.error}"),
                              flush=True)

        summary = summarize(rows, exports, found)
        summary["executorch_without_rewrite"] = raw_info
        doc = {"format": "crdtool.edge_cpu", "version": 1, "command": command, "started": started,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_avg_start": load_start,
               "load_avg_end": load_avg(), "host": cpu_info(), "threads": args.threads, "size": args.size,
               "verify_images": args.verify_images, "calib_images": args.calib_images, "versions": versions,
               "models": {k: v[1] for k, v in found.items()},
               "exports": exports, "summary": summary, "measurements": rows}
        doc = sanitize(doc, work)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        (args.out / f"{args.name}.md").write_text(markdown(doc))
        partial.unlink(missing_ok=True)
        plot_rows = []
        for cell in summary["cells"]:
            r = LatencyResult.from_dict(cell["best_round_result"])
            r.median_ms = cell["median_ms"]
            r.name = cell["model"]
            plot_rows.append(r)
        plot_latency_vs_macs([r for r in plot_rows if r.ok], args.out / f"{args.name}.png",
                             title=f"edge runtimes, {args.threads} threads, {args.size}x{args.size} "
                                   "(median over rounds)")
    print(markdown(doc))
    return 0


def summarize(rows: list[dict[str, Any]], exports: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """Per (model, backend, precision): median over rounds; per backend x precision: teacher/student ratio per
    round (same round = measured minutes apart under the same load) and its median."""
    from crdtool.bench.latency import LatencyResult
    from crdtool.bench.report import floor_fraction, floor_ms

    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["model"], row["backend"], row["precision"]), []).append(row)
    out_cells = []
    for (model, backend, prec), group in cells.items():
        ok = [g for g in group if g["result"].get("median_ms") is not None and not g["result"].get("error")]
        if not ok:
            out_cells.append({"model": model, "backend": backend, "precision": prec, "median_ms": None,
                              "error": group[0]["result"].get("error")})
            continue
        meds = [g["result"]["median_ms"] for g in ok]
        best = min(ok, key=lambda g: g["result"]["median_ms"])
        r = LatencyResult.from_dict(best["result"])
        kind = next((k for b, p, k in CONFIGS if b == backend and p == prec), None)
        parity = exports.get(model, {}).get("parity", {}).get(kind) if kind else None
        out_cells.append({"model": model, "backend": backend, "precision": prec,
                          "median_ms": round(statistics.median(meds), 3), "per_round_ms": [round(m, 3) for m in meds],
                          "min_ms": round(min(g["result"]["min_ms"] for g in ok), 3),
                          "load_avg": [g["result"]["load_avg"] for g in ok],
                          "probe_gmacs_per_s": [g["result"]["fma_gmacs_per_s"] for g in ok],
                          "macs_exact": r.macs_exact, "floor_ms_best_round": floor_ms(r),
                          "of_floor_best_round": floor_fraction(r), "parity_vs_pytorch": parity,
                          "best_round_result": best["result"]})
    ratios = []
    students = [m for m in found if m != "teacher"]
    for backend, prec, _ in CONFIGS:
        for student in students:
            per_round = []
            for rnd in sorted({r["round"] for r in rows}):
                t = next((r["result"] for r in rows if r["round"] == rnd and r["model"] == "teacher"
                          and r["backend"] == backend and r["precision"] == prec), None)
                s = next((r["result"] for r in rows if r["round"] == rnd and r["model"] == student
                          and r["backend"] == backend and r["precision"] == prec), None)
                if t and s and t.get("median_ms") and s.get("median_ms"):
                    per_round.append(t["median_ms"] / s["median_ms"])
            if per_round:
                ratios.append({"backend": backend, "precision": prec, "student": student,
                               "per_round": [round(x, 2) for x in per_round],
                               "median": round(statistics.median(per_round), 2)})
    return {"cells": out_cells, "ratios": ratios}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def parity_counts(doc: dict[str, Any]) -> str:
    counts: dict[str, set[int]] = {}
    for e in doc["exports"].values():
        for kind, p in e.get("parity", {}).items():
            counts.setdefault(kind, set()).add(int(p.get("n_images", 0)))
    return ", ".join(f"{k} {'/'.join(map(str, sorted(v)))}" for k, v in sorted(counts.items()))


def markdown(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    host = doc["host"]
    lines = [f"# Edge runtimes on this CPU ({doc['threads']} threads, batch 1, {doc['size']}x{doc['size']})", "",
             f"Command: `{doc['command']}`", "",
             f"{doc['started']} to {doc['finished']} on {host.get('cpu')} ({host.get('physical_cores')} cores, "
             f"flags {', '.join(host.get('cpu_flags', []))}); load average at start {doc['load_avg_start']}, "
             f"at end {doc['load_avg_end']}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()), "",
             "Models: " + "; ".join(f"**{k}**: {v}" for k, v in doc["models"].items()), "",
             "| model | backend | prec | median ms (per round) | min ms | floor ms | of floor | vs PyTorch max abs / PSNR"
             " | load avg (1 min) per round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in s["cells"]:
        if c.get("median_ms") is None:
            lines.append(f"| {c['model']} | {c['backend']} | {c['precision']} | error: {c.get('error')} | | | | | |")
            continue
        p = c.get("parity_vs_pytorch") or {}
        par = "-" if not p else f"{p.get('max_abs', 0):.1e} / {p.get('psnr_db') or 'inf'} dB"
        frac = c.get("of_floor_best_round")
        lines.append(f"| {c['model']} | {c['backend']} | {c['precision']} | **{_ms(c['median_ms'])}** "
                     f"({', '.join(_ms(x) for x in c['per_round_ms'])}) | {_ms(c['min_ms'])} | "
                     f"{_ms(c.get('floor_ms_best_round'))} | {'-' if frac is None else f'{100 * frac:.0f}%'} | {par} | "
                     f"{', '.join(str((la or [None])[0]) for la in c['load_avg'])} |")
    lines += ["", "Teacher / student on the same backend and precision (median of the per-round ratios):", "",
              "| backend | prec | student | ratio per round | median |", "|---|---|---|---|---|"]
    for r in s["ratios"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['student']} | "
                     f"{', '.join(f'{x:.1f}x' for x in r['per_round'])} | **{r['median']:.1f}x** |")
    refused = [(f, why) for e in doc["exports"].values() for f, why in (e.get("refused") or {}).items()]
    if refused:
        lines += ["", "Exports refused by the parity gate (not timed):", ""]
        lines += [f"- {f}: {why}" for f, why in refused]
    et_raw = s.get("executorch_without_rewrite") or {}
    lines += ["", f"ExecuTorch lowering without the exact rewrite: {et_raw.get('xnnpack_subgraphs')} XNNPACK "
              f"subgraphs, ops left to portable kernels: {et_raw.get('undelegated_ops')}.",
              "", "- 'floor ms' = exact MACs / the dense fp32 matmul rate probed in the same measurement; "
              "'of floor' = floor / median (best round). The CPU is shared: compare rows of one round.",
              "- Parity: each artifact vs the PyTorch fp32 model on the first N testA photos, from its export manifest "
              f"(N per artifact kind: {parity_counts(doc)}); int8 calibrated on the first "
              f"{doc.get('calib_images', 32)} (calibration and parity photos overlap: no training photos here)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
