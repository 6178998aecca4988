"""Student steps per second: a reference loop in the style of the public code vs crdtool's loop.

Both do the same work per step on the h2z recipe's models (teacher resnet ngf64 forward, student
mobile_resnet ngf16 forward/backward with CRD + VGG style/feature + the frozen online D's term, Adam):
  reference: plain fp32 eager, literal CRD (n x n x D tensors), teacher forward with autograd
             bookkeeping off only via no_grad, no channels_last, no autocast (as the public code runs);
  crdtool:   ``Distiller.student_step`` with the recipe's runtime (bf16 autocast + channels_last +
             fused Adam on CUDA; fp32 on CPU), Gram-matrix CRD, and the recipe's teacher cache: the
             teacher is frozen through a round's student epochs, so each image is translated once per
             round and its output reused (h2z: 40 student epochs a round; the timed steps are reuses).
The VGG weights are random (their values do not change the cost). For the main size it also times
crdtool's step under each runtime the platform offers (fp32/bf16 x channels_last, and the recipe's
``train.compile``), splits the reference step (teacher forward, literal CRD) to give the Amdahl bound
of a faster CRD alone, and counts the step's FLOPs against the device's measured matmul rate to give
the bound of any loop that recomputes the same work each step (a roofline).
Writes benchmarks/results/distill_step-<device>.json.

    python benchmarks/distill_step.py                 # CPU: 64x64 and 256x256
    python benchmarks/distill_step.py                 # GPU: 256x256

Targets (``TARGETS``): CPU 256 px >= 4x the reference; CPU 64 px, crdtool's step within 1.4x of the
FLOP roofline measured in the same run (at 64 px both loops are bound by the convolutions' arithmetic,
so the ways in are less work per step, e.g. reused teacher outputs and VGG features, not faster
matmuls); GPU 256 px >= 3x the reference.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


TARGETS = {
    "cpu_256px_speedup": ">= 4x the reference's student steps/s at 256x256 on CPU",
    "cpu_64px_roofline": ("crdtool's step time <= 1.4x the FLOP roofline (step FLOPs / peak matmul rate) "
                          "at 64x64 on CPU"),
    "gpu_256px_speedup": ">= 3x the reference's student steps/s at 256x256 on a GPU",
}


def target_results(dev: torch.device, rows: list[dict]) -> dict:
    """Each restated target with what this run measured and whether it passes (None: not measured here)."""
    by_size = {row["size"]: row for row in rows}
    out = {k: {"target": v, "measured": None, "pass": None} for k, v in TARGETS.items()}

    def verdict(key: str, measured: float, ok: bool) -> None:
        out[key].update({"measured": measured, "pass": ok})

    if dev.type == "cuda":
        if 256 in by_size:
            verdict("gpu_256px_speedup", by_size[256]["speedup"], by_size[256]["speedup"] >= 3.0)
        return out
    if 256 in by_size:
        verdict("cpu_256px_speedup", by_size[256]["speedup"], by_size[256]["speedup"] >= 4.0)
    roof = (by_size.get(64) or {}).get("roofline")
    if roof:
        verdict("cpu_64px_roofline", roof["crdtool_vs_roofline"], roof["crdtool_vs_roofline"] <= 1.4)
    out["gpu_256px_speedup"]["measured"] = "not measured (no GPU in this run)"
    return out


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def make_distiller(size: int, device: str, tmp: Path, vgg_path: Path):
    from crdtool import distill
    from crdtool.recipe import load_recipe
    from crdtool.train.loop import Distiller

    overrides = {"data.root": str(tmp / "data"), "data.load_size": size, "data.crop_size": size,
                 "data.synth": {"kind": "unpaired", "size": size, "count": 8, "seed": 0},
                 "data.num_workers": 0, "output_dir": str(tmp / "run"), "train.device": device,
                 "loss.vgg_weights": str(vgg_path)}
    recipe = load_recipe(ROOT / "recipes" / "h2z.toml", overrides)
    distill.prepare_data(recipe)
    return Distiller(recipe)


def reference_models(d) -> dict:
    """The reference's own copies of the distiller's models: fp32, contiguous layout, a plain Adam.

    Copies, so that crdtool's runtime (e.g. channels_last on CUDA) and the reference's plain layout
    can be timed in alternation without converting models back and forth.
    """
    m = {name: copy.deepcopy(mod).float().to(memory_format=torch.contiguous_format)
         for name, mod in (("teacher", d.G_A), ("student", d.student), ("D", d.D_A), ("vgg", d.perceptual.vgg))}
    m["opt"] = torch.optim.Adam(m["student"].parameters(), lr=2e-4, betas=(0.5, 0.999))
    return m


def reference_step_fn(d, m: dict):
    """The public code's student step: fp32, literal CRD, separate VGG passes, no layout tricks."""
    from crdtool.losses.relational import crd_literal

    r = d.r.loss
    teacher, student, D, vgg, opt = m["teacher"], m["student"], m["D"], m["vgg"], m["opt"]

    def gram(f):
        n, c, h, w = f.shape
        f = f.view(n, c, h * w)
        return f.bmm(f.transpose(1, 2)) / (c * h * w)

    def step(real_A):
        with torch.no_grad():
            t = teacher(real_A)
        s = student(real_A)
        loss_crd = r.lambda_crd * crd_literal(s, t, patch_size=r.patch_size)
        fs, ft = vgg((s + 1) / 2), vgg((t + 1) / 2)
        style = sum(F.l1_loss(gram(fs[k]), gram(ft[k].detach())) for k in fs)
        feature = F.l1_loss(fs["relu2_2"], ft["relu2_2"].detach())
        for p in D.parameters():
            p.requires_grad = False
        pred = D(s)
        gan = F.mse_loss(pred, torch.ones_like(pred))
        for p in D.parameters():
            p.requires_grad = True
        loss = loss_crd + r.lambda_style * style + r.lambda_feature * feature + gan
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def timed(fn, inputs, warmup: int, steps: int, sync) -> float:
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        fn(inputs[i % len(inputs)])
    sync()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=None, help="image side (default: 64 on CPU, 256 on CUDA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed round (default: 2 CPU at 64 px, 1 at 256, 20 GPU)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default: 12 CPU at 64 px, 3 at 256, 5 GPU)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="skip the per-runtime variants, the reference breakdown and the roofline")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="skip the torch.compile variants (~3 min of compiling on 2 CPU cores)")
    args = ap.parse_args()
    # compile times are reported: make them a cold start's, unless the caller chose a cache on purpose
    compile_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if args.compile and compile_cache is None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="crdtool-inductor-")
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    sizes = [args.size] if args.size else ([256] if dev.type == "cuda" else [64, 256])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    load_start = os.getloadavg()
    rows = [measure(size, dev, args, sync, detail=args.variants and i == 0) for i, size in enumerate(sizes)]
    name = device_name(dev)
    targets = target_results(dev, rows)
    doc = {
        "version": 1,
        "command": "python benchmarks/distill_step.py" + "".join(f" {a}" for a in shown_args()),
        "device": name, "device_type": dev.type,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "cpu_isa": cpu_isa() if dev.type == "cpu" else None,
        "torch": torch.__version__, "python": platform.python_version(), "batch": 1,
        "results": rows,
        "targets": targets,
        "work_per_step": "teacher resnet ngf64 forward (crdtool: reused from the round's teacher cache) + "
                         "student mobile_resnet ngf16 forward/backward with CRD (rows, columns, 32x32 patches) + "
                         "VGG16 style/feature + frozen online D (LSGAN) + Adam",
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
        "compile_cache": None if not args.compile else ("cold (a fresh temporary inductor cache)" if compile_cache is None
                                                        else f"TORCHINDUCTOR_CACHE_DIR={compile_cache}"),
    }
    out = args.out / f"distill_step-{'cpu' if dev.type == 'cpu' else slug(name)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    if args.compile and compile_cache is None:
        shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    print(json.dumps(doc, indent=2))


def shown_args() -> list[str]:
    """The command-line flags, without --out and its folder (results name no paths of the machine)."""
    argv, out = sys.argv[1:], []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            out.append(a)
    return out


def cpu_flags() -> set[str]:
    info = Path("/proc/cpuinfo")
    return set(info.read_text().split()) if info.exists() else set()


def cpu_isa() -> list[str]:
    """The vector extensions that decide CPU conv speed (the same model name can hide different hosts)."""
    return sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))


def cpu_has_native_bf16() -> bool:
    """bf16 autocast only pays on CPUs with bf16 dot-product units; elsewhere oneDNN emulates it (~50x slower)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def set_layout(d, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in (d.student, d.G_A, d.D_A, d.perceptual.vgg):
        m.to(memory_format=fmt)


def runtime_name(rt) -> str:
    prec = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[rt.autocast_dtype]
    return prec + ("+channels_last" if rt.channels_last else "")


def variants(d, batch, dev: torch.device, args, rounds: int, steps: int, sync) -> dict:
    """crdtool's step under each runtime choice the platform offers, taking turns round by round.

    Reports each choice's median steps/s and its median per-round ratio to the recipe's default
    runtime (``vs_default``): a choice is worth turning on only where that ratio is clearly above 1.
    """
    from statistics import median

    from crdtool.runtime import Runtime

    step = d.steps["student"]
    default, eager, eager_terms, cache = d.rt, d.fwd["student"], step.terms, step.cache
    choices = {"fp32": ("fp32", False), "fp32+channels_last": ("fp32", True),
               "bf16": ("bf16", False), "bf16+channels_last": ("bf16", True)}
    out: dict[str, Any] = {"default": runtime_name(default)}
    setups: dict[str, Callable[[], None]] = {}

    def use(rt, student_fwd, terms=eager_terms, teacher_cache=cache) -> None:
        d.rt = step.ctx.rt = d.opts.rt = rt
        set_layout(d, rt.channels_last)
        d.fwd["student"] = student_fwd
        step.terms = terms
        step.cache = teacher_cache

    def first_step_seconds() -> float:
        t0 = time.perf_counter()
        d.student_step(batch)
        sync()
        return round(time.perf_counter() - t0, 1)

    def try_variant(key: str, setup: Callable[[], None]) -> None:
        """Time the first step (compiling); a variant that fails is reported, not fatal."""
        setup()
        try:
            out[key + "_first_step_seconds"] = first_step_seconds()
            setups[key] = setup
        except Exception as e:  # noqa: BLE001 - any compiler failure: record it, measure the rest
            out[key] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        use(default, eager)

    for name, (prec, cl) in choices.items():
        if prec == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
            out[name] = "skipped: this CPU has no native bf16 (avx512_bf16/amx_bf16); emulated bf16 measured ~50x slower"
            continue
        setups[name] = lambda rt=Runtime.create(dev.type, prec, cl): use(rt, eager)
    if cache is not None:  # what the reuse is worth: the same step with the teacher run on every batch
        setups[runtime_name(default) + ", teacher recomputed"] = lambda: use(default, eager, teacher_cache=None)
    if args.compile:
        # (a) what train.compile = true does (train.networks.distribute): compile the student's forward
        compiled = torch.compile(d.student)
        try_variant(runtime_name(default) + "+compile", lambda: use(default, compiled))
        # (b) not in the library yet, measured to decide: the whole student loss (student, CRD, VGG, D term)
        # as one compiled region; on CUDA in "reduce-overhead" mode, i.e. replayed as CUDA graphs
        mode = "reduce-overhead" if dev.type == "cuda" else "default"
        loss = torch.compile(eager_terms, mode=mode)
        try_variant(f"{runtime_name(default)}+compile(student loss, {mode})", lambda: use(default, eager, loss))
    rates: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(rounds):
        for name, setup in setups.items():
            setup()
            rates[name].append(timed(lambda b: d.student_step(b), [batch], 1, steps, sync))
    use(default, eager)
    del step.terms  # back to the class's method
    base = rates.get(runtime_name(default))
    for name, r in rates.items():
        out[name] = {"steps_per_s": round(median(r), 3)}
        if base is not None:
            out[name]["vs_default"] = round(median(a / b for a, b in zip(r, base)), 2)
    return out


def peak_matmul_gflops(dev: torch.device, dtype: torch.dtype, sync) -> float:
    """The device's best dense matmul rate in ``dtype``: no convolution loop runs faster than this."""
    n = 2048 if dev.type == "cpu" else 8192  # a GPU needs a large product to reach its peak
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    return 2 * n ** 3 / 1e9 * timed(lambda _: a @ b, [None], 3, 10 if dev.type == "cpu" else 100, sync)


def roofline(d, batch, ref, x, dev: torch.device, reference_ms: float, crdtool_ms: float, sync) -> dict:
    """FLOPs of the step's work (forward + backward, torch's FlopCounterMode) against the peak matmul rate.

    The work is the reference step's: every FLOP a loop must do when it recomputes everything each step.
    crdtool's step may do less of it (``crdtool_step_gflop``): a teacher frozen through the student's
    epochs is translated once per image and its outputs reused (train.teacher_cache), which is the way
    below the roofline of recomputing.
    ``speedup_bound_at_peak`` = reference step time / (work FLOPs / peak rate): the most a loop that
    recomputes this work could gain over the reference on this device, at the runtime's precision.
    ``crdtool_vs_roofline`` = crdtool's measured step time / that floor (1.0 = at the roofline).
    """
    from torch.utils.flop_counter import FlopCounterMode

    def gflop(fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops() / 1e9

    work, own = gflop(lambda: ref(x)), gflop(lambda: d.student_step(batch))
    dtype = d.rt.autocast_dtype or torch.float32
    peak = peak_matmul_gflops(dev, dtype, sync)
    floor_ms = 1000 * work / peak
    return {"step_gflop": round(work, 2), "crdtool_step_gflop": round(own, 2), "peak_matmul_gflops": round(peak, 1),
            "peak_dtype": str(dtype).removeprefix("torch."), "step_ms_at_peak": round(floor_ms, 1),
            "speedup_bound_at_peak": round(reference_ms / floor_ms, 2),
            "crdtool_step_ms": round(crdtool_ms, 1), "crdtool_vs_roofline": round(crdtool_ms / floor_ms, 2),
            "crdtool_vs_own_flops_at_peak": round(crdtool_ms / (1000 * own / peak), 2)}


def breakdown(d, m: dict, ref, x: torch.Tensor, reps: int, sync) -> dict:
    """Where the reference step's time goes, and the speedup bound that implies (Amdahl).

    If everything but the CRD ran at the reference's speed, the best possible speedup from a faster
    CRD alone is ref_step / (ref_step - literal_crd + crdtool_crd).
    """
    from crdtool.losses.relational import crd_literal

    r = d.r.loss

    def ms(fn) -> float:
        return 1000 / timed(lambda _: fn(), [None], 1, reps, sync)

    with torch.no_grad():
        t = m["teacher"](x)
    s = m["student"](x).detach().requires_grad_(True)

    def crd(loss_fn):
        return lambda: loss_fn(s, t).backward()

    out = {"reference_step_ms": ms(lambda: ref(x))}
    with torch.no_grad():
        out["teacher_forward_ms"] = ms(lambda: m["teacher"](x))
    out["literal_crd_fwd_bwd_ms"] = ms(crd(lambda a, b: crd_literal(a, b, patch_size=r.patch_size)))
    out["crdtool_crd_fwd_bwd_ms"] = ms(crd(d.criteria.crd))
    rest = out["reference_step_ms"] - out["literal_crd_fwd_bwd_ms"]
    out["literal_crd_share_of_reference"] = round(out["literal_crd_fwd_bwd_ms"] / out["reference_step_ms"], 3)
    out["speedup_bound_from_crd_alone"] = round(out["reference_step_ms"] / (rest + out["crdtool_crd_fwd_bwd_ms"]), 2)
    return {k: round(v, 1) if k.endswith("_ms") else v for k, v in out.items()}


def alternated(fns: dict, inputs: dict, rounds: int, steps: int, sync) -> dict[str, list[float]]:
    """Steps/s of each function per round, the functions taking turns within every round.

    Alternating puts slow drifts of the machine (clock, other load) on both sides alike; the medians
    over rounds, and the spread of the per-round ratio, then say how much a number can be trusted.
    """
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            rates[k].append(timed(fn, [inputs[k]], 0, steps, sync))
    return rates


def measure(size: int, dev: torch.device, args, sync, detail: bool) -> dict:
    from statistics import median

    from crdtool.losses.perceptual import VGG16Features

    cpu = dev.type == "cpu"
    steps = args.steps or (20 if not cpu else (2 if size <= 64 else 1))
    rounds = args.rounds or (5 if not cpu else (12 if size <= 64 else 3))
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        torch.manual_seed(0)
        torch.save(VGG16Features().state_dict(), tmp / "vgg.pth")
        d = make_distiller(size, str(dev), tmp, tmp / "vgg.pth")
        batch = next(iter(d._batches("student", 0, 0)))
        runtime = d.rt.describe()
        m = reference_models(d)  # same weights, fp32 contiguous, plain Adam; the literal CRD
        ref = reference_step_fn(d, m)
        x = batch["A"].to(dev)
        fns = {"crdtool": lambda b: d.student_step(b), "reference": ref}
        inputs = {"crdtool": batch, "reference": x}
        for k in fns:  # warm-up (allocator, oneDNN/cuDNN algorithm choice)
            timed(fns[k], [inputs[k]], args.warmup, 1, sync)
        rates = alternated(fns, inputs, rounds, steps, sync)
        options = variants(d, batch, dev, args, rounds, steps, sync) if detail else None
        parts = breakdown(d, m, ref, x, max(2, steps), sync) if detail else None
        bound = roofline(d, batch, ref, x, dev, 1000 / median(rates["reference"]),
                         1000 / median(rates["crdtool"]), sync) if detail else None
    ratios = sorted(a / b for a, b in zip(rates["crdtool"], rates["reference"]))
    row = {"size": size, "runtime": runtime, "rounds": rounds, "steps_per_round": steps,
           "student_steps_per_s": {k: round(median(v), 3) for k, v in rates.items()},
           "speedup": round(median(ratios), 2),
           "speedup_per_round_min_max": [round(ratios[0], 2), round(ratios[-1], 2)]}
    if detail:
        row["crdtool_steps_per_s_by_runtime"] = options
        row["reference_breakdown"] = parts
        row["roofline"] = bound
    return row


if __name__ == "__main__":
    main()
