"""Bench results for people and machines: a rich table, Markdown, a versioned JSON document, a plot.

All functions are pure (they return objects or write the file they are asked to); nothing prints.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from crdtool.bench.env import current_command, device_info, library_versions, physical_cores
from crdtool.bench.latency import LatencyResult
from crdtool.bench.quality import QualityResult

BENCH_FORMAT = "crdtool.bench"
BENCH_VERSION = 1


@dataclass(frozen=True)
class Speedup:
    """Teacher vs student on one backend, both measured in the same invocation."""

    backend: str
    precision: str
    teacher: str
    student: str
    teacher_ms: float
    student_ms: float

    @property
    def ratio(self) -> float:
        return self.teacher_ms / self.student_ms if self.student_ms else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "teacher": self.teacher, "student": self.student,
                "teacher_median_ms": self.teacher_ms, "student_median_ms": self.student_ms, "speedup": self.ratio}


def speedups(teacher: Sequence[LatencyResult], student: Sequence[LatencyResult]) -> list[Speedup]:
    """Pair teacher and student results by (backend, precision): median over median."""
    out = []
    by_key = {(r.backend, r.precision): r for r in student if r.ok}
    for t in teacher:
        s = by_key.get((t.backend, t.precision))
        if t.ok and s is not None:
            out.append(Speedup(t.backend, t.precision, t.name, s.name, t.median_ms, s.median_ms))
    return out


# ----------------------------------------------------------------------------- formatting


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def fmt_macs(v: int | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e9:.2f}G" if v >= 1e9 else f"{v / 1e6:.1f}M"


def fmt_fidelity(f: dict[str, Any] | None) -> str:
    if not f:
        return "-"
    if f.get("error"):
        return "error"
    psnr = f.get("psnr_db")
    p = "inf" if psnr is None or (isinstance(psnr, float) and math.isinf(psnr)) else f"{psnr:.1f}"
    return f"{p} dB / {f.get('max_abs', float('nan')):.1e}"


def floor_ms(r: LatencyResult) -> float | None:
    """Exact MACs per batch at this run's dense fp32 rate: the latency of a perfectly efficient backend."""
    if not r.macs_exact or not r.fma_gmacs_per_s:
        return None
    return r.macs_exact * r.batch / (r.fma_gmacs_per_s * 1e6)


def floor_fraction(r: LatencyResult) -> float | None:
    """floor / median: the fraction of the compute floor a backend reaches (1.0 = matmul efficiency)."""
    f = floor_ms(r)
    return None if f is None or not r.median_ms else f / r.median_ms


def _fmt_fraction(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def latency_rows(results: Sequence[LatencyResult]) -> list[list[str]]:
    rows = []
    for r in results:
        if not r.ok:
            rows.append([r.name, r.backend, r.precision, fmt_macs(r.macs)] + ["-"] * 8 + [f"error: {r.error}"])
            continue
        runs = f"{r.runs}" + ("" if r.runs >= r.runs_requested else f"/{r.runs_requested}")
        rows.append([r.name, r.backend, r.precision, fmt_macs(r.macs), fmt_ms(r.median_ms), fmt_ms(r.p90_ms),
                     fmt_ms(r.p99_ms), fmt_ms(r.min_ms), f"{r.throughput_ips:.1f}", runs, fmt_ms(floor_ms(r)),
                     _fmt_fraction(floor_fraction(r)), fmt_fidelity(r.fidelity)])
    return rows


LATENCY_HEADER = ["model", "backend", "prec", "MACs", "median ms", "p90", "p99", "min", "img/s", "runs",
                  "floor ms", "of floor", "vs PyTorch: PSNR / max abs"]


def setup_lines(results: Sequence[LatencyResult]) -> list[str]:
    """What the numbers include, once per distinct setup: device, threads, batch/size, inputs, timing."""
    lines, seen = [], set()
    for r in results:
        if not r.ok:
            continue
        dev = r.device.get("gpu") or f"{r.device.get('cpu', '?')}, {r.threads} thread(s)"
        line = (f"{r.backend} on {dev}; input {r.batch}x3x{r.size}x{r.size}; warm-up ({r.warmup}) excluded; "
                f"{r.timing}; {r.includes}")
        if line not in seen:
            seen.add(line)
            lines.append(line)
    inputs = {r.inputs for r in results if r.ok}
    lines += [f"inputs: {i}" for i in sorted(inputs)]
    rates = sorted({(r.threads, r.fma_gmacs_per_s) for r in results if r.ok and r.fma_gmacs_per_s},
                   key=lambda t: (t[0] or 0, t[1]))
    lines += [f"compute floor: exact MACs / {rate:.1f} GMAC/s, this CPU's dense fp32 matmul rate on {th} thread(s) "
              "measured in the same run; 'of floor' = floor / median" for th, rate in rates]
    return lines


def render_table(results: Sequence[LatencyResult], comparisons: Sequence[Speedup] = (),
                 quality: Sequence[QualityResult] = (), title: str = "crdtool bench", notes: Sequence[str] = ()):
    """A rich renderable (a Group of tables and notes) for ``console.print``."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(LATENCY_HEADER):
        t.add_column(h, justify="right" if 3 <= i <= 11 else "left", overflow="fold", no_wrap=i < 3)
    for row in latency_rows(results):
        if row[-1].startswith("error"):
            t.add_row(*row[:4], *["-"] * 8, Text(row[-1], style="red"))
        else:
            t.add_row(*row)
    parts.append(t)
    if comparisons:
        c = Table(title="speed-up (teacher median / student median, same backend, same run)", title_justify="left")
        for h in ("backend", "prec", "teacher", "student", "teacher ms", "student ms", "speed-up"):
            c.add_column(h, justify="right" if h.endswith(("ms", "up")) else "left")
        for s in comparisons:
            c.add_row(s.backend, s.precision, s.teacher, s.student, fmt_ms(s.teacher_ms), fmt_ms(s.student_ms),
                      f"{s.ratio:.1f}x")
        parts.append(c)
    if quality:
        parts.append(quality_table(quality))
    parts.append(Text("\n".join(setup_lines(results) + list(notes)), style="dim"))
    return Group(*parts)


def quality_rows(quality: Sequence[QualityResult]) -> list[list[str]]:
    rows = []
    for q in quality:
        if q.error:
            rows.append([q.name, q.backend, q.precision, "-", "-", "-", f"error: {q.error}"])
            continue
        kid = "-" if q.kid_mean is None else f"{q.kid_mean * 1000:.2f}" + (
            " ± n/a (one subset)" if q.kid_std is None else f" ± {q.kid_std * 1000:.2f}")
        rows.append([q.name, q.backend, q.precision, f"{q.fid:.2f}", kid, str(q.n_fake), q.real])
    return rows


QUALITY_HEADER = ["model", "backend", "precision", "FID", "KID x1000", "images", "real statistics"]


def quality_table(quality: Sequence[QualityResult]):
    from rich.table import Table

    t = Table(title="quality (the artifact's own translations of the test split)", title_justify="left")
    for h in QUALITY_HEADER:
        t.add_column(h, justify="right" if h in ("FID", "KID x1000", "images") else "left", overflow="fold")
    for row in quality_rows(quality):
        t.add_row(*row)
    return t


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def markdown_report(doc: dict[str, Any], title: str = "Latency") -> str:
    """Markdown of a bench document (as returned by ``bench_document``): command, device, tables, notes."""
    results = [LatencyResult.from_dict(r) for r in doc.get("results", [])]
    quality = [QualityResult(**q) for q in doc.get("quality", [])]
    host = doc.get("host", {})
    lines = [f"# {title}", "", f"Command: `{doc.get('command', '')}`", "",
             f"Created {doc.get('created', '')} on {host.get('cpu', '?')} ({host.get('physical_cores', '?')} cores"
             + (f", GPU {host['gpu']}" if host.get("gpu") else "") + f"); load average at start "
             f"{host.get('load_avg_start')}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in doc.get("versions", {}).items()), "",
             _md_table(LATENCY_HEADER, latency_rows(results)), ""]
    comps = doc.get("comparisons", [])
    if comps:
        lines += ["Speed-up (teacher median / student median, same backend, same run):", "",
                  _md_table(["backend", "prec", "teacher", "student", "teacher ms", "student ms", "speed-up"],
                            [[c["backend"], c.get("precision", ""), c["teacher"], c["student"],
                              fmt_ms(c["teacher_median_ms"]), fmt_ms(c["student_median_ms"]), f"{c['speedup']:.1f}x"]
                             for c in comps]), ""]
    if quality:
        lines += [_md_table(QUALITY_HEADER, quality_rows(quality)), ""]
    lines += [f"- {line}" for line in setup_lines(results)]
    lines += [f"- {n}" for n in doc.get("notes", [])]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- documents and files


def _finite(obj: Any) -> Any:
    """JSON without NaN/Infinity: non-finite floats become None (an identical output has infinite PSNR)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def bench_document(results: Sequence[LatencyResult], comparisons: Sequence[Speedup] = (),
                   quality: Sequence[QualityResult] = (), command: str | None = None,
                   notes: Sequence[str] = (), load_avg_start: list[float] | None = None,
                   with_times: bool = True) -> dict[str, Any]:
    """The versioned JSON document ``crdtool bench --json`` writes."""
    gpu_result = next((r for r in results if r.device.get("gpu")), None)
    host = device_info("cuda" if gpu_result else "cpu", physical_cores())
    host["load_avg_start"] = load_avg_start
    return _finite({"format": BENCH_FORMAT, "version": BENCH_VERSION,
                    "command": command if command is not None else current_command(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": host, "versions": library_versions(),
                    "results": [r.to_dict(with_times) for r in results],
                    "comparisons": [c.to_dict() for c in comparisons],
                    "quality": [q.to_dict() for q in quality], "notes": list(notes)})


def plot_latency_vs_macs(results: Sequence[LatencyResult], path: str | Path, title: str | None = None) -> Path:
    """Median latency vs MACs per image, one point per (artifact, backend), both axes log; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crdtool.fileio import atomic_path

    pts = [r for r in results if r.ok and r.macs]
    exact = bool(pts) and all(r.macs_exact for r in pts)  # the floor needs every MAC counted once

    def gmacs(r: LatencyResult) -> float:
        return (r.macs_exact if exact else r.macs) * r.batch / 1e9

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = "osD^v<>p*hX"
    backends = sorted({r.backend for r in pts})
    for i, b in enumerate(backends):
        group = [r for r in pts if r.backend == b]
        ax.scatter([gmacs(r) for r in group], [r.median_ms for r in group], marker=markers[i % len(markers)],
                   s=50, label=b, zorder=3)
        for r in group:
            ax.annotate(f"{r.name} ({r.precision})", (gmacs(r), r.median_ms), textcoords="offset points",
                        xytext=(6, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    rate = max((r.fma_gmacs_per_s for r in pts if r.fma_gmacs_per_s), default=None)
    if exact and rate:  # the compute floor: latency = exact MACs / this run's dense fp32 rate
        lo, hi = min(gmacs(r) for r in pts) / 2, max(gmacs(r) for r in pts) * 6
        ax.plot([lo, hi], [lo * 1e3 / rate, hi * 1e3 / rate], "k--", lw=1, zorder=2,
                label=f"compute floor ({rate:.0f} GMAC/s dense fp32)")
    if pts:  # room for the labels on the right
        xs, ys = [gmacs(r) for r in pts], [r.median_ms for r in pts]
        ax.set_xlim(min(xs) / 2, max(xs) * 6)
        floor_ys = [x * 1e3 / rate for x in xs] if exact and rate else ys
        ax.set_ylim(min(ys + floor_ys) / 2, max(ys) * 2)
    ax.set_xlabel("GMACs per batch (" + ("exact: every multiply-add once" if exact else "literature convention")
                  + ")")
    ax.set_ylabel("median latency per batch (ms)")
    skipped = len([r for r in results if r.ok]) - len(pts)
    dev = next((r.device.get("gpu") or f"{r.device.get('cpu')}, {r.threads} threads" for r in pts), "")
    ax.set_title((title or "latency vs MACs") + (f"\n{dev}" if dev else "") +
                 (f" ({skipped} result(s) without MACs not shown)" if skipped else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if backends:
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
