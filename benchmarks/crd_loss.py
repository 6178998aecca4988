"""CRD loss: fast (Gram, chunked) vs literal (n x n x D) formulation, forward + backward.

One 1x3x256x256 student/teacher pair, patch 32, CycleGAN mode (the paper's setting). Each
variant runs in a fresh subprocess so its peak memory is its own: on CPU the peak RSS above the
RSS just before the first call (VmHWM after resetting it through /proc/self/clear_refs, else the
ru_maxrss delta); on CUDA torch.cuda.max_memory_allocated above the memory allocated before.
The two variants must agree in value and in the student's gradient.

    python benchmarks/crd_loss.py                 # writes benchmarks/results/crd_loss-cpu.json
    python benchmarks/crd_loss.py --device cuda   # writes benchmarks/results/crd_loss-<gpu>.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from crdtool.fileio import write_json_atomic  # noqa: E402

FORMAT = "crdtool.bench.crd_loss"
VERSION = 1
SHAPE = (1, 3, 256, 256)
PATCH = 32
TARGETS = {"cpu": {"speedup_min": 50.0, "memory_ratio_max": 0.25},
           "cuda": {"speedup_min": 10.0, "memory_ratio_max": None}}
AGREE_REL = 1e-4  # float32 at 256 px: both variants round differently


def _inputs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth, correlated outputs in (-1, 1), like a student's and its teacher's."""
    g = torch.Generator().manual_seed(0)
    n, c, h, w = SHAPE
    base = torch.nn.functional.interpolate(torch.randn(n, c, h // 8, w // 8, generator=g), size=(h, w),
                                           mode="bilinear")
    s = torch.tanh(base + 0.2 * torch.randn(SHAPE, generator=g))
    t = torch.tanh(1.2 * base + 0.2 * torch.randn(SHAPE, generator=g))
    return s.to(device), t.to(device)


def _rss_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def run_variant(variant: str, device: torch.device, repeats: int, warmup: int, grad_path: str) -> dict:
    """Child process: time ``repeats`` forward+backward calls and record the peak memory."""
    from crdtool.losses.relational import CRDLoss, crd_literal

    fn = CRDLoss(patch_size=PATCH) if variant == "fast" else (lambda s, t: crd_literal(s, t, patch_size=PATCH))
    student, teacher = _inputs(device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def step() -> tuple[float, torch.Tensor]:
        s = student.clone().requires_grad_(True)
        value = fn(s, teacher)
        value.backward()
        sync()
        return float(value), s.grad

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
        mem_method = "torch.cuda.max_memory_allocated - memory_allocated before"
    else:
        base_rss = _rss_kib("VmRSS")
        hwm_ok = _reset_peak_rss() and base_rss is not None
        ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mem_method = ("VmHWM after /proc/self/clear_refs reset - VmRSS before" if hwm_ok
                      else "ru_maxrss after - ru_maxrss before")
    times, cpu_times = [], []
    value, grad = None, None
    for i in range(warmup + repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        value, grad = step()
        if i >= warmup:
            times.append(time.perf_counter() - w0)
            cpu_times.append(time.process_time() - c0)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base_alloc
    elif hwm_ok:
        peak = (_rss_kib("VmHWM") - base_rss) * 1024
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - ru_before) * 1024
    torch.save(grad.detach().cpu(), grad_path)
    return {"times_s": times, "median_s": statistics.median(times), "cpu_times_s": cpu_times,
            "median_cpu_s": statistics.median(cpu_times), "warmup_runs": warmup, "peak_mem_bytes": int(peak),
            "peak_mem_method": mem_method, "value": value}


def _device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    model = platform.processor() or "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    return {"type": "cpu", "name": model, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _spawn(variant: str, args: argparse.Namespace, repeats: int, warmup: int, grad_path: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--device", args.device,
           "--repeats-fast" if variant == "fast" else "--repeats-literal", str(repeats),
           "--warmup", str(warmup), "--grad-out", grad_path]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--repeats-fast", type=int, default=10)
    ap.add_argument("--repeats-literal", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 1 fast, 0 literal)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/crd_loss-<device>.json)")
    ap.add_argument("--child", choices=["fast", "literal"], help=argparse.SUPPRESS)
    ap.add_argument("--grad-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but no CUDA GPU is available")

    if args.child:
        repeats = args.repeats_fast if args.child == "fast" else args.repeats_literal
        warmup = args.warmup if args.warmup is not None else (1 if args.child == "fast" else 0)
        print(json.dumps(run_variant(args.child, device, repeats, warmup, args.grad_out)))
        return 0

    info = _device_info(device)
    with tempfile.TemporaryDirectory() as tmp:
        g_fast, g_lit = os.path.join(tmp, "fast.pt"), os.path.join(tmp, "literal.pt")
        fast = _spawn("fast", args, args.repeats_fast, 1 if args.warmup is None else args.warmup, g_fast)
        literal = _spawn("literal", args, args.repeats_literal, 0 if args.warmup is None else args.warmup, g_lit)
        grad_fast, grad_lit = torch.load(g_fast), torch.load(g_lit)
    value_rel = abs(fast["value"] - literal["value"]) / abs(literal["value"])
    grad_rel = float((grad_fast - grad_lit).norm() / grad_lit.norm())
    speedup = literal["median_s"] / fast["median_s"]
    mem_ratio = fast["peak_mem_bytes"] / literal["peak_mem_bytes"] if literal["peak_mem_bytes"] > 0 else None
    targets = TARGETS[device.type]
    passed = {
        "speedup": speedup >= targets["speedup_min"],
        "memory": None if targets["memory_ratio_max"] is None or mem_ratio is None
        else mem_ratio <= targets["memory_ratio_max"],
        "agreement": value_rel <= AGREE_REL and grad_rel <= AGREE_REL,
    }
    passed["all"] = all(v for v in passed.values() if v is not None)
    result = {
        "format": FORMAT, "version": VERSION,
        "command": "python " + " ".join(shlex.quote(a) for a in
                                         [os.path.relpath(__file__, Path.cwd()), *(argv if argv is not None
                                                                                   else sys.argv[1:])]),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": info, "torch": torch.__version__, "python": platform.python_version(),
        "workload": {"shape": list(SHAPE), "dtype": "float32", "patch_size": PATCH,
                     "mode": "CycleGAN (rows/columns per image, patches pooled)",
                     "measured": "CRDLoss forward + backward w.r.t. the student"},
        "fast": fast, "literal": literal,
        "speedup": round(speedup, 2),
        "speedup_cpu_time": round(literal["median_cpu_s"] / fast["median_cpu_s"], 2),
        "memory_ratio": None if mem_ratio is None else round(mem_ratio, 4),
        "agreement": {"value_rel_diff": value_rel, "grad_rel_diff": grad_rel, "tolerance": AGREE_REL},
        "targets": targets, "pass": passed,
    }
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results" /
                                           f"crd_loss-{'cpu' if device.type == 'cpu' else _slug(info['name'])}.json")
    write_json_atomic(out, result)
    mem = "n/a" if mem_ratio is None else f"{mem_ratio:.3f}"
    print(f"fast {fast['median_s'] * 1e3:.1f} ms, literal {literal['median_s']:.2f} s: {speedup:.1f}x "
          f"(cpu time {result['speedup_cpu_time']:.1f}x); peak memory {fast['peak_mem_bytes'] / 2**20:.1f} MiB vs "
          f"{literal['peak_mem_bytes'] / 2**20:.1f} MiB (ratio {mem}); value/grad rel diff "
          f"{value_rel:.1e}/{grad_rel:.1e}; pass={passed['all']} -> {out}")
    return 0 if passed["all"] else 1


if __name__ == "__main__":
    sys.exit(main())
