"""Super-resolution evidence: the ESRGAN teacher's cost, the bicubic baselines, and two students.

Stages (each writes benchmarks/results/sr/<stage>.json; a finished stage is skipped, an interrupted
training resumes from its checkpoint, so a longer budget completes later with the same command):

  profile    rrdb at a 256x256 LR input: params, MACs (literature / exact / AGD's thop count)
  baselines  bicubic x4 PSNR-Y / SSIM-Y on Set5, Set14, B100 (the published 28.42 / 26.00 / 25.96)
  a          PSNR-oriented: search an SR student under 110.9 GMACs (AGD's budget) on T91 + BSD200, train
             the derived network on HR only, score it on Set5 / Set14 / B100 next to the published anchors
  b          Real-ESRGAN x4plus distilled into a student at <= 1/10 of its MACs (L1 + CRD to the teacher's
             cached outputs), scored against the teacher's outputs, with an image grid and both latencies
  b-sets     the committed (b) student against the teacher on more sets (b-sets.json), each set's teacher
             cost estimated first and the set left out when it would not fit --b-sets-minutes
  export     the committed (b) student exported fp32 / fp16 / int8 ONNX: PSNR-Y against PyTorch on real LR
             images, against HR, and onnxruntime latency (b-export.json)

    python benchmarks/sr.py                         # every stage at the budget below (CPU, threads 1)
    python benchmarks/sr.py --stages b --b-steps 20000 --sets Set5 Set14 B100   # a longer run later
    python benchmarks/sr.py --stages b-sets report --sets Set5 Set14 B100 --b-sets-minutes 20

The default data folder is ../shared/data/sr beside the repository (this script's choice; crdtool itself
takes data paths as arguments). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sr"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sr"
DEFAULT_TEACHER = ROOT.parent / "shared" / "weights" / "realesrgan_x4plus_rrdb.fp16.safetensors"
AGD_BUDGET = 110.9e9
# Published x4 PSNR-Y anchors (Set5 / Set14 / B100) and exact conv MACs at a 256x256 LR input. FSRCNN and
# VDSR MACs are computed here from their published layer configurations (one Y channel):
# FSRCNN(56, 12, 4): 5x5 1->56, 1x1 56->12, 4x 3x3 12->12, 1x1 12->56 at LR, 9x9 56->1 deconv stride 4
# (counted over its input grid) = 12,464 MACs per LR pixel; VDSR: 20 3x3 convs (1->64, 18x 64->64,
# 64->1) on the bicubic-upscaled 1024x1024 image = 664,704 MACs per HR pixel.
ANCHORS = {
    "bicubic": {"Set5": 28.42, "Set14": 26.00, "B100": 25.96, "gmacs": 0.0},
    "FSRCNN": {"Set5": 30.71, "Set14": 27.59, "B100": 26.98, "gmacs": round(12_464 * 256 * 256 / 1e9, 2)},
    "VDSR": {"Set5": 31.35, "Set14": 28.01, "B100": 27.29, "gmacs": round(664_704 * 1024 * 1024 / 1e9, 1)},
    "AGD": {"Set5": 31.79, "Set14": 28.36, "B100": 27.41, "gmacs": 110.9},
    "ESRGAN-PSNR (RRDB)": {"Set5": 32.73, "Set14": 28.99, "B100": 27.85, "gmacs": 1176.6},
}


def host() -> dict[str, Any]:
    import torch

    from crdtool.bench.env import cpu_info, load_avg
    from crdtool.deploy.manifest import library_versions

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"cpu": cpu_info(), "isa": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "fma")),
            "torch_threads": torch.get_num_threads(), "load_avg": load_avg(), "versions": library_versions(),
            "command": "python benchmarks/sr.py " + " ".join(sys.argv[1:])}


def write(name: str, doc: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def done(name: str) -> bool:
    return (RESULTS / f"{name}.json").is_file()


# ---------------------------------------------------------------------------------------------- stages


def stage_profile(args) -> None:
    from crdtool.models.registry import family_spec
    from crdtool.profile import profile_spec

    t0 = time.time()
    p = profile_spec(family_spec("rrdb"), 256)
    write("profile", {"model": "rrdb (ESRGAN RRDBNet, 23 blocks, num_feat 64, growth 32, x4)", "input": [1, 3, 256, 256],
                      "params": p.params, "macs": {**p.macs, **p.extra_macs},
                      "note": "agd = thop as AGD_SR counts: convs + 1 per biased conv output + 1 per LeakyReLU output",
                      "seconds": time.time() - t0, "host": host()})


def stage_baselines(args) -> None:
    from crdtool.data.sr import load_eval_set
    from crdtool.metrics.sr import bicubic_upscale, score_set

    rows = {}
    for name in ("Set5", "Set14", "B100"):
        pairs = load_eval_set(args.data / name, 4)
        s = score_set([bicubic_upscale(p, 4) for p in pairs], [p.hr for p in pairs], [p.name for p in pairs], 4)
        rows[name] = {"psnr": round(s.psnr, 3), "ssim": round(s.ssim, 4), "published_psnr": ANCHORS["bicubic"][name]}
        print(name, rows[name])
    write("baselines", {"method": "MATLAB-style bicubic x4 (crdtool.data.sr.imresize), PSNR-Y/SSIM-Y, border 4",
                        "sets": rows, "host": host()})


def _recipe(name: str, data: Path, student: dict[str, Any], teacher: Path | None, steps: int, train_sets: list[str],
            loss: dict[str, Any], max_images: int | None, crop: int, batch: int):
    from crdtool.recipe import parse_recipe

    doc = {"name": name, "task": "sr", "seed": 0, "output_dir": str(ROOT / "runs" / "sr-evidence" / name),
           "data": {"root": str(data), "scale": 4, "train_sets": train_sets, "eval_sets": ["Set5"],
                    "crop_size": crop, "batch_size": batch, "eval_images": 5,
                    **({"max_images": max_images} if max_images else {})},
           "student": student, "loss": loss,
           "train": {"lr": 5e-4, "beta1": 0.9, "beta2": 0.99, "max_steps": steps, "eval_every": max(steps // 4, 1),
                     "checkpoint_every": max(steps // 8, 1), "threads": 1}}
    if teacher is not None:
        doc["teacher"] = {"arch": "rrdb", "checkpoint": str(teacher)}
    return parse_recipe(doc, f"benchmarks/sr.py:{name}")


def _train(recipe) -> tuple[Any, float]:
    from crdtool.distill import run

    t0 = time.time()
    resume = (recipe.run_dir / "checkpoints" / "latest.json").is_file()
    result = run(recipe, resume=resume)
    return result, time.time() - t0


def _score_sets(artifact: Path, data: Path, sets: list[str], reference: dict[str, list] | None = None):
    """PSNR/SSIM vs HR (and vs ``reference`` outputs per set) of a PyTorch SR generator."""
    from crdtool.bench.sr import sr_upscaler
    from crdtool.data.sr import load_eval_set
    from crdtool.metrics.sr import evaluate_sr, score_set

    upscale, _ = sr_upscaler(artifact)
    out = {}
    for name in sets:
        pairs = load_eval_set(data / name, 4)
        s, outs = evaluate_sr(upscale, pairs, 4)
        row = {"psnr": round(s.psnr, 3), "ssim": round(s.ssim, 4)}
        if reference is not None and name in reference:
            f = score_set(outs, reference[name], [p.name for p in pairs], 4)
            row.update(psnr_vs_teacher=round(f.psnr, 3), ssim_vs_teacher=round(f.ssim, 4))
        out[name] = row
        print(artifact.name, name, row)
    return out


def stage_a(args) -> None:
    from crdtool.models.checkpoints import load_generator
    from crdtool.profile import profile_model
    from crdtool.search.sr_space import SRSearchConfig, run_sr_search

    run_root = ROOT / "runs" / "sr-evidence"
    arch_path = run_root / "a-search" / "sr_arch.json"
    if not arch_path.is_file():
        # CPU-sized space: 8 cells of AGD's 6 operators x widths 16/32/48 after a 32-channel head (its
        # largest member is ~22G, so the 110.9G budget does not bind here; a GPU run widens the space)
        cfg = SRSearchConfig(data=args.data, train_sets=["train/T91", "train/BSD200"], budget=AGD_BUDGET,
                             num_feat=32, cells=8, widths=(16, 32, 48), steps=args.a_search_steps, batch_size=4,
                             crop_size=64, out_dir=run_root / "a-search", threads=1)
        run_sr_search(cfg)
    arch = json.loads(arch_path.read_text())
    recipe = _recipe("a-train", args.data, {"arch": str(arch_path)}, None, args.a_steps,
                     ["train/T91", "train/BSD200"], {"kd": "none", "lambda_pixel": 0.0, "lambda_hr": 1.0},
                     None, 64, 16)
    result, seconds = _train(recipe)
    student = recipe.run_dir / "student.safetensors"
    model = load_generator(student)
    p = profile_model(model, (1, 3, 256, 256))
    scores = _score_sets(student, args.data, args.sets)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(student, RESULTS / "a-student.safetensors")
    shutil.copy2(arch_path, RESULTS / "a-sr_arch.json")
    write("a", {"what": "searched SR student, PSNR-oriented (L1 to HR, no teacher), CPU short budget",
                "arch": arch, "search_steps": args.a_search_steps, "train_steps": result.steps,
                "train_seconds": round(seconds, 1), "patch": "64x64 HR / 16x16 LR, batch 16, T91 + BSD200",
                "gmacs_256": {k: round(v / 1e9, 3) for k, v in {**p.macs, **p.extra_macs}.items()},
                "params": p.params, "sets": scores, "anchors": ANCHORS, "host": host()})


def stage_b(args) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from crdtool.bench.sr import sr_latency
    from crdtool.data.sr import load_eval_set, to_tensor, to_uint8
    from crdtool.metrics.sr import bicubic_upscale, score_set
    from crdtool.models.checkpoints import load_generator
    from crdtool.models.rrdb import load_rrdb
    from crdtool.profile import profile_model
    from crdtool.train.teacher_cache import TeacherCache

    student_cfg = {"arch": "sr_resnet", "ngf": 32, "n_blocks": 8}
    recipe = _recipe("b-distill", args.data, student_cfg, args.teacher, args.b_steps, ["train/T91"],
                     {"kd": "crd", "lambda_crd": 1.0, "patch_size": 32, "lambda_pixel": 1.0, "lambda_hr": 0.0},
                     args.b_images, 64, 16)
    result, seconds = _train(recipe)
    student_path = recipe.run_dir / "student.safetensors"
    teacher = load_rrdb(args.teacher)
    cache = TeacherCache(teacher, folder=recipe.run_dir / "teacher_cache")
    reference = {}
    for name in args.sets:
        pairs = load_eval_set(args.data / name, 4)
        reference[name] = [to_uint8(cache.outputs([p.path], to_tensor(p.lr)[None], "sr-x4-eval")[0]) for p in pairs]
    scores = _score_sets(student_path, args.data, args.sets, reference)
    t_scores = {}
    for name in args.sets:  # the teacher against HR, from the same cached outputs
        pairs = load_eval_set(args.data / name, 4)
        s = score_set(reference[name], [p.hr for p in pairs], [p.name for p in pairs], 4)
        t_scores[name] = {"psnr": round(s.psnr, 3), "ssim": round(s.ssim, 4)}
    # the teacher's profile and latency do not change between runs: a rerun (more steps) reuses them
    previous = json.loads((RESULTS / "b.json").read_text()) if (RESULTS / "b.json").is_file() else None
    if previous is None:
        pt = profile_model(teacher, (1, 3, 256, 256), name="rrdb (Real-ESRGAN x4plus)")
        teacher_gmacs = {k: round(v / 1e9, 3) for k, v in {**pt.macs, **pt.extra_macs}.items()}
        teacher_params = pt.params
    else:
        teacher_gmacs, teacher_params = previous["gmacs_256"]["teacher"], previous["params"]["teacher"]
    ps = profile_model(load_generator(student_path), (1, 3, 256, 256))
    # grid: LR (nearest x4) | bicubic | teacher | student, first image of each set
    rows = []
    student = load_generator(student_path).eval()
    for name in args.sets:
        pair = load_eval_set(args.data / name, 4, max_images=1)[0]
        lr_up = np.kron(pair.lr, np.ones((4, 4, 1), np.uint8))
        bic = bicubic_upscale(pair, 4)
        bic = bic if bic.ndim == 3 else np.repeat(bic[:, :, None], 3, axis=2)
        with torch.no_grad():
            st = to_uint8(student(to_tensor(pair.lr)[None])[0])
        row = np.concatenate([lr_up, bic, reference[name][0], st], axis=1)
        rows.append(row[:256] if row.shape[0] >= 256 else np.pad(row, ((0, 256 - row.shape[0]), (0, 0), (0, 0))))
    RESULTS.mkdir(parents=True, exist_ok=True)
    width = max(r.shape[1] for r in rows)
    Image.fromarray(np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])).save(
        RESULTS / "b-grid.png")
    shutil.copy2(student_path, RESULTS / "b-student.safetensors")
    lat_s = sr_latency(student_path, runs=5, warmup=1, threads=1)
    lat_t = previous["latency_ms_threads1"]["teacher"] if previous else sr_latency(args.teacher, runs=1, warmup=0,
                                                                                   threads=1)
    write("b", {"what": "Real-ESRGAN x4plus -> sr_resnet ngf32 x8 blocks: L1 + CRD to the teacher's cached outputs, "
                        "T91 patches 64x64 HR, batch 16, CPU short budget",
                "train_steps": result.steps, "train_images": args.b_images or 91, "train_seconds": round(seconds, 1),
                "gmacs_256": {"teacher": teacher_gmacs,
                              "student": {k: round(v / 1e9, 3) for k, v in {**ps.macs, **ps.extra_macs}.items()}},
                "params": {"teacher": teacher_params, "student": ps.params},
                "teacher_measurements": "this run" if previous is None else "reused from the previous b.json",
                "student": scores, "teacher_vs_hr": t_scores,
                "latency_ms_threads1": {"teacher": lat_t, "student": lat_s},
                "grid": "b-grid.png (rows: first image of each set; LR nearest x4 | bicubic | teacher | student)",
                "host": host()})


def stage_b_sets(args) -> None:
    """The committed (b) student against the teacher on more sets, one set at a time within a time limit.

    Each set's teacher cost is estimated first from its LR pixels (conv MACs scale with them) and the
    teacher throughput measured on this host; a set that would not finish within ``--b-sets-minutes`` is
    recorded as not run, with its estimate. Finished sets are kept in b-sets.json; a rerun scores only the
    sets that are missing there (or all with --force). Teacher outputs are cached under runs/ (fp16 .npy),
    shared with stage b: ``teacher_seconds`` is the teacher's time in this invocation, 0 for a set whose
    outputs were already in the cache.
    """
    from crdtool.data.sr import load_eval_set, to_tensor, to_uint8
    from crdtool.metrics.sr import score_set
    from crdtool.models.rrdb import load_rrdb
    from crdtool.train.teacher_cache import TeacherCache

    student = RESULTS / "b-student.safetensors"
    teacher_gmacs_256 = json.loads((RESULTS / "b.json").read_text())["gmacs_256"]["teacher"]["exact"]
    path = RESULTS / "b-sets.json"
    doc = json.loads(path.read_text()) if path.is_file() and not args.force else {}
    sets, skipped = doc.get("sets", {}), doc.get("not_run", {})
    teacher = load_rrdb(args.teacher)
    cache = TeacherCache(teacher, folder=ROOT / "runs" / "sr-evidence" / "b-distill" / "teacher_cache")
    budget_s, t_start = args.b_sets_minutes * 60, time.time()
    spent = {"seconds": 0.0, "gmacs": 0.0}  # teacher forward time and work on this host, this run

    def rate() -> float | None:  # GMACs per second of the teacher measured so far (cache misses only)
        return spent["gmacs"] / spent["seconds"] if spent["seconds"] > 1 else None

    for name in args.sets:
        if name in sets:
            print(f"{name}: already scored in {path.relative_to(ROOT)}; skipped")
            continue
        pairs = load_eval_set(args.data / name, 4)
        gmacs = [teacher_gmacs_256 * p.lr.shape[0] * p.lr.shape[1] / 256 ** 2 for p in pairs]
        reference, set_seconds = [], 0.0
        for i, (pair, g) in enumerate(zip(pairs, gmacs)):
            r, left = rate(), budget_s - (time.time() - t_start)
            if r is not None and sum(gmacs[i:]) / r > left:
                skipped[name] = {"images": len(pairs), "teacher_tmacs": round(sum(gmacs) / 1e3, 2),
                                 "estimated_minutes": round(sum(gmacs) / r / 60, 1),
                                 "minutes_left": round(left / 60, 1), "teacher_gmacs_per_s": round(r, 2),
                                 "reason": f"the teacher's outputs on {name} would not finish within "
                                           f"--b-sets-minutes {args.b_sets_minutes:g}"}
                print(name, "not run:", skipped[name])
                break
            misses = cache.misses
            t0 = time.perf_counter()
            out = cache.outputs([pair.path], to_tensor(pair.lr)[None], "sr-x4-eval")[0]
            if cache.misses > misses:
                dt = time.perf_counter() - t0
                spent["seconds"] += dt
                spent["gmacs"] += g
                set_seconds += dt
            reference.append(to_uint8(out))
        else:
            skipped.pop(name, None)
            row = _score_sets(student, args.data, [name], {name: reference})[name]
            t = score_set(reference, [p.hr for p in pairs], [p.name for p in pairs], 4)
            sets[name] = {"images": len(pairs), "lr_pixels": int(sum(p.lr.shape[0] * p.lr.shape[1] for p in pairs)),
                          "teacher_tmacs": round(sum(gmacs) / 1e3, 2), "teacher_seconds": round(set_seconds, 1),
                          "student": row, "teacher_vs_hr": {"psnr": round(t.psnr, 3), "ssim": round(t.ssim, 4)}}
        write("b-sets", {"what": "the committed (b) student (b-student.safetensors) scored against the Real-ESRGAN "
                                 "teacher's outputs and against HR (x4 PSNR-Y / SSIM-Y, border 4), 1 thread",
                         "student": str(student.relative_to(ROOT)), "sets": sets, "not_run": skipped,
                         "teacher_gmacs_per_s_this_run": None if rate() is None else round(rate(), 2),
                         "teacher_seconds_this_run": round(spent["seconds"], 1),
                         "minutes_limit": args.b_sets_minutes, "host": host()})


def stage_report(args) -> None:
    """benchmarks/results/sr/sr.md: the tables the README quotes, from the stage JSON files."""
    docs = {n: json.loads((RESULTS / f"{n}.json").read_text()) for n in ("profile", "baselines", "a", "b")
            if (RESULTS / f"{n}.json").is_file()}
    lines = ["# Super-resolution evidence (benchmarks/sr.py)", ""]
    if "profile" in docs:
        p = docs["profile"]
        m = p["macs"]
        lines += [f"rrdb at 1x3x256x256: {p['params']:,} parameters; MACs literature {m['literature'] / 1e9:.2f}G, "
                  f"exact {m['exact'] / 1e9:.2f}G, AGD (thop) {m['agd'] / 1e9:.2f}G", ""]
    if "a" in docs:
        a, base = docs["a"], docs.get("baselines", {}).get("sets", {})
        sets = list(a["sets"])
        lines += ["## (a) PSNR-oriented searched student (x4 PSNR-Y / SSIM-Y)", "",
                  "| model | GMACs @256 LR | params | " + " | ".join(sets) + " |",
                  "|---|---:|---:|" + "---:|" * len(sets)]
        lines.append(f"| crdtool searched, {a['train_steps']} steps on CPU | {a['gmacs_256']['exact']:.2f} | "
                     f"{a['params']:,} | " + " | ".join(f"{a['sets'][s]['psnr']:.2f} / {a['sets'][s]['ssim']:.4f}"
                                                       for s in sets) + " |")
        if base:
            lines.append("| bicubic (measured here) | 0 | 0 | " + " | ".join(
                f"{base[s]['psnr']:.2f} / {base[s]['ssim']:.4f}" if s in base else "" for s in sets) + " |")
        for name, anchor in ANCHORS.items():
            if name == "bicubic":
                continue
            g = f"{anchor['gmacs']:g}" if "gmacs" in anchor else "n/a"
            lines.append(f"| {name} (published) | {g} | | " + " | ".join(f"{anchor[s]:.2f}" for s in sets) + " |")
        lines.append("")
    if "b" in docs:
        b = docs["b"]
        g = b["gmacs_256"]
        lines += ["## (b) Real-ESRGAN x4plus -> student", "",
                  f"MACs at a 256x256 LR input (exact): teacher {g['teacher']['exact']:.2f}G, student "
                  f"{g['student']['exact']:.2f}G ({g['teacher']['exact'] / g['student']['exact']:.0f}x fewer); "
                  f"params {b['params']['teacher']:,} vs {b['params']['student']:,}; {b['train_steps']} steps on "
                  f"{b['train_images']} T91 images.", "",
                  "| set | student vs teacher PSNR / SSIM | student vs HR | teacher vs HR |", "|---|---:|---:|---:|"]
        for s, row in b["student"].items():
            t = b["teacher_vs_hr"][s]
            lines.append(f"| {s} | {row['psnr_vs_teacher']:.2f} / {row['ssim_vs_teacher']:.4f} | {row['psnr']:.2f} / "
                         f"{row['ssim']:.4f} | {t['psnr']:.2f} / {t['ssim']:.4f} |")
        lines += ["", "| latency (1 thread, median ms) | " + " | ".join(
            f"{r['input'][1]}x{r['input'][0]} -> {r['output'][1]}x{r['output'][0]}"
            for r in b["latency_ms_threads1"]["student"]) + " |", "|---|" + "---:|" * len(b["latency_ms_threads1"]["student"])]
        for who in ("teacher", "student"):
            lines.append(f"| {who} | " + " | ".join(f"{r['median_ms']:.0f}" for r in b["latency_ms_threads1"][who]) + " |")
        lines.append("")
    lines += _report_b_sets(docs.get("baselines", {}).get("sets", {}))
    lines += _report_b_export()
    (RESULTS / "sr.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def stage_export(args) -> None:
    """The committed (b) student exported fp32 / fp16 / int8 (crdtool.deploy.sr.export_sr): each graph against
    PyTorch by PSNR-Y on Set14's real LR images (int8 calibrated on T91 LR images), against HR on Set5, and its
    onnxruntime latency with one thread on a 320x180 frame."""
    from crdtool.bench.sr import sr_latency, sr_quality
    from crdtool.deploy.sr import export_sr

    work = ROOT / "runs" / "sr-evidence" / "b-export"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.time()
    res = export_sr(RESULTS / "b-student.safetensors", work, fp16=True, int8=True, images=args.data / "Set14",
                    verify_images=14, calib=args.data / "train" / "T91", calib_images=32)
    seconds = time.time() - t0
    manifest = json.loads(res.manifest.read_text())
    rows = {}
    for entry in manifest["artifacts"]:
        path = work / entry["file"]
        q = sr_quality(path, args.data / "Set5", 4, threads=1)
        lat = sr_latency(path, sizes=((180, 320),), runs=3, warmup=1, threads=1)[0]
        rows[entry["kind"]] = {"file": entry["file"], "bytes": entry["bytes"], "vs_pytorch_set14": entry["parity"],
                               "status": entry["status"], "set5_vs_hr": {"psnr": round(q["psnr"], 3),
                                                                         "ssim": round(q["ssim"], 4)},
                               "latency_ms_320x180": {"median": round(lat["median_ms"], 1),
                                                      "min": round(lat["min_ms"], 1), "runs": lat["runs"]}}
        print(entry["kind"], rows[entry["kind"]])
    def rel(block: dict[str, Any]) -> dict[str, Any]:  # data paths relative to --data, as <data>/...
        return {**block, "images": block["images"].replace(str(args.data.resolve()), "<data>")
                .replace(str(args.data), "<data>")}

    write("b-export", {"what": "b-student.safetensors exported by crdtool.deploy.sr.export_sr (onnxruntime graphs, "
                               "dynamic LR size); parity = PSNR-Y of the uint8 outputs against PyTorch fp32's, "
                               "pooled over the images (border 4)", "data": "<data> = --data (default "
                               "../shared/data/sr beside the repository)",
                       "verification": rel(manifest["verification"]), "calibration": rel(manifest["calibration"]),
                       "export_seconds": round(seconds, 1), "artifacts": rows, "host": host()})


def _report_b_sets(bicubic: dict[str, Any]) -> list[str]:
    if not (RESULTS / "b-sets.json").is_file():
        return []
    d = json.loads((RESULTS / "b-sets.json").read_text())
    lines = ["### (b) on every set (b-sets.json: the committed student, x4 PSNR-Y / SSIM-Y)", "",
             "| set | images | student vs teacher | student vs HR | teacher vs HR | bicubic vs HR | teacher TMACs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in d["sets"].items():
        st, t, bic = row["student"], row["teacher_vs_hr"], bicubic.get(name)
        cells = [f"{st['psnr_vs_teacher']:.2f} / {st['ssim_vs_teacher']:.4f}", f"{st['psnr']:.2f} / {st['ssim']:.4f}",
                 f"{t['psnr']:.2f} / {t['ssim']:.4f}", f"{bic['psnr']:.2f} / {bic['ssim']:.4f}" if bic else ""]
        lines.append(f"| {name} | {row['images']} | " + " | ".join(cells) + f" | {row['teacher_tmacs']:.2f} |")
    for name, why in d.get("not_run", {}).items():
        lines.append(f"| {name} | {why['images']} | not run: about {why['estimated_minutes']:.0f} min of teacher "
                     f"time, {why['minutes_left']:.0f} min left | | | | {why['teacher_tmacs']:.2f} |")
    rate = d.get("teacher_gmacs_per_s_this_run")
    lines += ["", f"Teacher throughput in that run: {rate} GMACs/s (1 thread); teacher time "
                  f"{d['teacher_seconds_this_run'] / 60:.1f} min for the sets it had not cached.", ""]
    return lines


def _report_b_export() -> list[str]:
    if not (RESULTS / "b-export.json").is_file():
        return []
    d = json.loads((RESULTS / "b-export.json").read_text())
    lines = ["### (b) exported (b-export.json: onnxruntime, dynamic LR size)", "",
             f"Verified on {d['verification']['n_images']} LR images of {Path(d['verification']['images']).name}; "
             f"int8 calibrated on {d['calibration']['n_images']} LR images of "
             f"{Path(d['calibration']['images']).name}.", "",
             "| graph | bytes | PSNR-Y vs PyTorch (worst image) | Set5 vs HR | 320x180 ms (1 thread) |",
             "|---|---:|---:|---:|---:|"]
    for kind, row in d["artifacts"].items():
        par, hr = row["vs_pytorch_set14"], row["set5_vs_hr"]
        lines.append(f"| {kind} | {row['bytes']:,} | {par['psnr_y_db']:.1f} ({par['psnr_y_min_db']:.1f}) | "
                     f"{hr['psnr']:.2f} / {hr['ssim']:.4f} | {row['latency_ms_320x180']['median']:.0f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    ap.add_argument("--stages", nargs="+", default=["profile", "baselines", "a", "b", "report"])
    ap.add_argument("--sets", nargs="+", default=["Set5", "Set14", "B100"])
    ap.add_argument("--a-search-steps", type=int, default=120)
    ap.add_argument("--a-steps", type=int, default=1000)
    ap.add_argument("--b-steps", type=int, default=1500)
    ap.add_argument("--b-images", type=int, default=None, help="train on the first N T91 images (teacher cost)")
    ap.add_argument("--b-sets-minutes", type=float, default=20.0,
                    help="b-sets: time limit; a set whose teacher outputs would not fit is recorded as not run")
    ap.add_argument("--force", action="store_true", help="redo stages whose JSON exists")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    for stage in args.stages:
        if stage not in ("report", "b-sets") and done(stage) and not args.force:
            print(f"{stage}: done ({(RESULTS / (stage + '.json')).relative_to(ROOT)}); skipped")
            continue
        print(f"== {stage}")
        {"profile": stage_profile, "baselines": stage_baselines, "a": stage_a, "b": stage_b,
         "b-sets": stage_b_sets, "export": stage_export, "report": stage_report}[stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
