"""Student steps per second: a reference loop in the style of the public code vs crdtool's loop.

Both do the same work per step on the h2z recipe's models (teacher resnet ngf64 forward, student
mobile_resnet ngf16 forward/backward with CRD + VGG style/feature + the frozen online D's term, Adam):
  reference: plain fp32 eager, literal CRD (n x n x D tensors), teacher forward with autograd
             bookkeeping off only via no_grad, no channels_last, no autocast (as the public code runs);
  crdtool:   ``Distiller.student_step`` with the recipe's runtime (bf16 autocast + channels_last +
             fused Adam on CUDA; fp32 on CPU), Gram-matrix CRD, teacher under inference_mode.
The VGG weights are random (their values do not change the cost). For the main size it also times
crdtool's step under each runtime the platform offers (fp32/bf16 x channels_last) and splits the
reference step (teacher forward, literal CRD) to give the Amdahl bound of a faster CRD alone. Writes
benchmarks/results/distill_step-<device>.json.

    python benchmarks/distill_step.py                 # CPU: 64x64 (target >= 5x), plus 256x256 for context
    python benchmarks/distill_step.py                 # GPU: 256x256 (target >= 3x)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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


def reference_step_fn(d, opt):
    """The public code's student step: fp32, literal CRD, separate VGG passes, no layout tricks."""
    from crdtool.losses.relational import crd_literal

    r = d.r.loss
    teacher, student, D, vgg = d.G_A, d.student, d.D_A, d.perceptual.vgg

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
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="skip the per-runtime variants and the reference breakdown")
    args = ap.parse_args()
    os.environ["CRDTOOL_QUIET"] = "1"
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    sizes = [args.size] if args.size else ([256] if dev.type == "cuda" else [64, 256])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    load_start = os.getloadavg()
    rows = [measure(size, dev, args, sync, detail=args.variants and i == 0) for i, size in enumerate(sizes)]
    target = 3.0 if dev.type == "cuda" else 5.0
    name = device_name(dev)
    main_row = rows[0]
    doc = {
        "version": 1,
        "command": "python benchmarks/distill_step.py" + (f" --size {args.size}" if args.size else ""),
        "device": name, "device_type": dev.type,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "cpu_isa": cpu_isa() if dev.type == "cpu" else None,
        "torch": torch.__version__, "batch": 1,
        "results": rows,
        "target": f">= {target}x at {main_row['size']}x{main_row['size']}",
        "pass": main_row["speedup"] >= target,
        "work_per_step": "teacher resnet ngf64 forward + student mobile_resnet ngf16 forward/backward with "
                         "CRD (rows, columns, 32x32 patches) + VGG16 style/feature + frozen online D (LSGAN) + Adam",
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
    }
    out = args.out / f"distill_step-{'cpu' if dev.type == 'cpu' else slug(name)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


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


def variants(d, batch, dev: torch.device, args, steps: int, sync) -> dict:
    """crdtool's step under each runtime choice the platform offers (the default is the recipe's)."""
    from crdtool.runtime import Runtime

    default = d.rt
    choices = {"fp32": ("fp32", False), "fp32+channels_last": ("fp32", True),
               "bf16": ("bf16", False), "bf16+channels_last": ("bf16", True)}
    out = {}
    for name, (prec, cl) in choices.items():
        if prec == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
            out[name] = "skipped: this CPU has no native bf16 (avx512_bf16/amx_bf16); emulated bf16 measured ~50x slower"
            continue
        d.rt = Runtime.create(dev.type, prec, cl)
        set_layout(d, cl)
        out[name] = round(timed(lambda b: d.student_step(b), [batch], args.warmup, steps, sync), 3)
    d.rt = default
    set_layout(d, default.channels_last)
    return out


def breakdown(d, ref, x: torch.Tensor, reps: int, sync) -> dict:
    """Where the reference step's time goes, and the speedup bound that implies (Amdahl).

    If everything but the CRD ran at the reference's speed, the best possible speedup from a faster
    CRD alone is ref_step / (ref_step - literal_crd + crdtool_crd).
    """
    from crdtool.losses.relational import crd_literal

    r = d.r.loss

    def ms(fn) -> float:
        return 1000 / timed(lambda _: fn(), [None], 1, reps, sync)

    with torch.no_grad():
        t = d.G_A(x)
    s = d.student(x).detach().requires_grad_(True)

    def crd(loss_fn):
        return lambda: loss_fn(s, t).backward()

    out = {"reference_step_ms": ms(lambda: ref(x))}
    with torch.no_grad():
        out["teacher_forward_ms"] = ms(lambda: d.G_A(x))
    out["literal_crd_fwd_bwd_ms"] = ms(crd(lambda a, b: crd_literal(a, b, patch_size=r.patch_size)))
    out["crdtool_crd_fwd_bwd_ms"] = ms(crd(d.crd))
    rest = out["reference_step_ms"] - out["literal_crd_fwd_bwd_ms"]
    out["literal_crd_share_of_reference"] = round(out["literal_crd_fwd_bwd_ms"] / out["reference_step_ms"], 3)
    out["speedup_bound_from_crd_alone"] = round(out["reference_step_ms"] / (rest + out["crdtool_crd_fwd_bwd_ms"]), 2)
    return {k: round(v, 1) if k.endswith("_ms") else v for k, v in out.items()}


def measure(size: int, dev: torch.device, args, sync, detail: bool) -> dict:
    from crdtool.losses.perceptual import VGG16Features

    steps = args.steps or (50 if dev.type == "cuda" else (10 if size <= 64 else 3))
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        torch.manual_seed(0)
        torch.save(VGG16Features().state_dict(), tmp / "vgg.pth")
        d = make_distiller(size, str(dev), tmp, tmp / "vgg.pth")
        batch = next(iter(d._batches("student", 0, 0)))
        results = {"crdtool": timed(lambda b: d.student_step(b), [batch], args.warmup, steps, sync)}
        runtime = d.rt.describe()
        options = variants(d, batch, dev, args, max(2, steps // 2), sync) if detail else None
        # reference: same models, fp32 contiguous, a plain Adam, the literal CRD
        set_layout(d, False)
        opt = torch.optim.Adam(d.student.parameters(), lr=2e-4, betas=(0.5, 0.999))
        ref = reference_step_fn(d, opt)
        x = batch["A"].to(dev)
        results["reference"] = timed(ref, [x], 1, max(2, steps // (3 if dev.type == "cpu" else 1)), sync)
        parts = breakdown(d, ref, x, max(2, steps // 3), sync) if detail else None
    row = {"size": size, "runtime": runtime, "student_steps_per_s": {k: round(v, 3) for k, v in results.items()},
           "speedup": round(results["crdtool"] / results["reference"], 2)}
    if detail:
        row["crdtool_steps_per_s_by_runtime"] = options
        row["reference_breakdown"] = parts
    return row


if __name__ == "__main__":
    main()
