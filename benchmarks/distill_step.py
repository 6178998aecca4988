"""Student steps per second: a reference loop in the style of the public code vs crdtool's loop.

Both do the same work per step on the h2z recipe's models (teacher resnet ngf64 forward, student
mobile_resnet ngf16 forward/backward with CRD + VGG style/feature + the frozen online D's term, Adam):
  reference: plain fp32 eager, literal CRD (n x n x D tensors), teacher forward with autograd
             bookkeeping off only via no_grad, no channels_last, no autocast (as the public code runs);
  crdtool:   ``Distiller.student_step`` with the recipe's runtime (bf16 autocast + channels_last +
             fused Adam on CUDA; fp32 on CPU), Gram-matrix CRD, teacher under inference_mode.
The VGG weights are random (their values do not change the cost). Writes
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
    args = ap.parse_args()
    os.environ["CRDTOOL_QUIET"] = "1"
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    sizes = [args.size] if args.size else ([256] if dev.type == "cuda" else [64, 256])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    load_start = os.getloadavg()
    rows = [measure(size, dev, args, sync) for size in sizes]
    target = 3.0 if dev.type == "cuda" else 5.0
    name = device_name(dev)
    main_row = rows[0]
    doc = {
        "version": 1,
        "command": "python benchmarks/distill_step.py" + (f" --size {args.size}" if args.size else ""),
        "device": name, "device_type": dev.type,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
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


def measure(size: int, dev: torch.device, args, sync) -> dict:
    from crdtool.losses.perceptual import VGG16Features

    steps = args.steps or (50 if dev.type == "cuda" else (10 if size <= 64 else 3))
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        torch.manual_seed(0)
        torch.save(VGG16Features().state_dict(), tmp / "vgg.pth")
        d = make_distiller(size, str(dev), tmp, tmp / "vgg.pth")
        batch = next(iter(d._batches("student", 0, 0)))
        results = {"crdtool": timed(lambda b: d.student_step(b), [batch], args.warmup, steps, sync)}
        # reference: same models, fp32 contiguous, a plain Adam, the literal CRD
        for m in (d.student, d.G_A, d.D_A, d.perceptual.vgg):
            m.to(memory_format=torch.contiguous_format)
        opt = torch.optim.Adam(d.student.parameters(), lr=2e-4, betas=(0.5, 0.999))
        ref = reference_step_fn(d, opt)
        results["reference"] = timed(ref, [batch["A"].to(dev)], 1, max(2, steps // (3 if dev.type == "cpu" else 1)),
                                     sync)
        runtime = d.rt.describe()
    return {"size": size, "runtime": runtime, "student_steps_per_s": {k: round(v, 3) for k, v in results.items()},
            "speedup": round(results["crdtool"] / results["reference"], 2)}


if __name__ == "__main__":
    main()
