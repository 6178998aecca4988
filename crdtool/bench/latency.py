"""Latency of one artifact on one backend, measured the way the benchmark conventions ask.

* Warm-up is excluded; timed runs follow; median, p90, p99, min and throughput are reported with
  the actual number of runs (``max_seconds`` makes the count adaptive for slow models).
* Inputs are real images (a folder, or the run's recipe test split), else deterministic smooth
  noise; never zeros. A pool of distinct inputs is cycled.
* On GPU, by default inputs are staged on the device before the timed region and outputs stay
  there: the number is device compute time (CUDA events for torch and TensorRT). ``host_io``
  times host->device copy, compute and device->host copy instead, with synchronisation.
* ``bench_artifacts`` runs each (artifact, backend) measurement in a fresh process
  (``python -m crdtool.bench.latency --worker SPEC``) so they cannot disturb each other.

Backends and runners live in :mod:`crdtool.bench.runners`; inputs in :mod:`crdtool.bench.inputs`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from crdtool.bench.artifacts import export_temp_onnx, profile_artifact, resolve_reference
from crdtool.bench.env import current_command, device_info, library_versions, load_avg, physical_cores
from crdtool.bench.inputs import input_pool
from crdtool.bench.floor import probe_fma_rate
from crdtool.bench.dispatch import make_runner
from crdtool.bench.runners import EDGE_BACKENDS, Runner, artifact_kind, default_backend, parse_backend
from crdtool.errors import CrdError

if TYPE_CHECKING:
    from crdtool.profile import ModelProfile

RESULT_MARKER = "CRDTOOL_BENCH_RESULT "
INPUT_POOL = 8  # distinct input batches cycled through the timed runs


@dataclass(frozen=True)
class Warmup:
    """``"auto"`` = until 50 runs or 1 s, whichever comes first (at least 3 runs); ``"50"`` runs; ``"1.5s"`` seconds."""

    runs: int | None = 50
    seconds: float | None = 1.0
    min_runs: int = 3

    @classmethod
    def parse(cls, text: str | int | float | None) -> "Warmup":
        if text is None or str(text).strip().lower() in ("", "auto"):
            return cls()
        s = str(text).strip().lower()
        try:
            if s.endswith("s"):
                sec = float(s[:-1])
                if sec < 0:
                    raise ValueError
                return cls(None, sec, 1 if sec > 0 else 0)
            n = int(s)
            if n < 0:
                raise ValueError
            return cls(n, None, n)
        except ValueError:
            raise CrdError(f"--warmup expects a run count (50), seconds (1s) or auto, got {text!r}") from None

    def done(self, n: int, elapsed: float) -> bool:
        if n < self.min_runs:
            return False
        if self.runs is not None and n >= self.runs:
            return True
        return self.seconds is not None and elapsed >= self.seconds

    def describe(self) -> str:
        if self.runs is not None and self.seconds is not None:
            return f"{self.runs} runs or {self.seconds:g} s (min {self.min_runs})"
        return f"{self.runs} runs" if self.runs is not None else f"{self.seconds:g} s"

@dataclass
class BenchSpec:
    """One measurement: what the worker process receives as JSON."""

    artifact: str
    backend: str = "auto"
    batch: int = 1
    size: int = 256
    warmup: str = "auto"
    runs: int = 200
    max_seconds: float | None = None
    threads: int | None = None
    images: str | None = None  # folder (or dataset root) of real images for the inputs
    host_io: bool = False
    reference: str | None = None  # PyTorch checkpoint the fidelity is measured against
    fidelity_images: int = 4
    name: str | None = None
    onnx: str | None = None  # a torch artifact on an ort backend runs this exported file (set by bench_artifacts)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "BenchSpec":
        return cls(**json.loads(text))

@dataclass
class LatencyResult:
    artifact: str
    name: str
    kind: str
    backend: str
    precision: str
    batch: int
    size: int
    threads: int | None = None
    warmup: str = ""
    warmup_runs: int = 0
    warmup_s: float = 0.0
    runs: int = 0
    runs_requested: int = 0
    max_seconds: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    throughput_ips: float | None = None
    timing: str = ""
    includes: str = ""
    inputs: str = ""
    macs: int | None = None  # per image, literature convention (torchprofile-compatible)
    macs_exact: int | None = None  # per image, every multiply-add once (the compute floor's numerator)
    fma_gmacs_per_s: float | None = None  # this CPU's dense fp32 rate, probed in the same run (crdtool.bench.floor)
    params: int | None = None
    fidelity: dict[str, Any] | None = None  # vs the PyTorch fp32 model: psnr_db, max_abs, mean_abs, n_images
    device: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    command: str = ""
    load_avg: list[float] | None = None
    started: str = ""
    error: str | None = None
    times_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.median_ms is not None

    def to_dict(self, with_times: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_times:
            d.pop("times_ms")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyResult":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def summarize(times_ms: Sequence[float], batch: int) -> dict[str, float]:
    """median / p90 / p99 / min / mean / std in ms and images per second at the median."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise CrdError("no timed runs")
    med, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"median_ms": float(med), "p90_ms": float(p90), "p99_ms": float(p99), "min_ms": float(t.min()),
            "mean_ms": float(t.mean()), "std_ms": float(t.std()), "throughput_ips": float(batch * 1000.0 / med)}


def _timed_loop(runner: Runner, handles: list, pool: list[torch.Tensor], warmup: Warmup, runs: int,
                max_seconds: float | None, host_io: bool) -> tuple[list[float], int, float, str, str]:
    events = runner.use_events and not host_io
    if events:
        start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def once(i: int) -> float:
        k = i % len(pool)
        if host_io:
            t0 = time.perf_counter_ns()
            runner.set_input(runner.upload(pool[k]))
            runner.run()
            runner.output()
            runner.sync()
            return (time.perf_counter_ns() - t0) / 1e6
        runner.set_input(handles[k])
        if events:
            runner.sync()
            start_ev.record()
            runner.run()
            end_ev.record()
            end_ev.synchronize()
            return float(start_ev.elapsed_time(end_ev))
        runner.sync()
        t0 = time.perf_counter_ns()
        runner.run()
        runner.sync()
        return (time.perf_counter_ns() - t0) / 1e6

    n, t0 = 0, time.perf_counter()
    while not warmup.done(n, time.perf_counter() - t0):
        once(n)
        n += 1
    warm_runs, warm_s = n, time.perf_counter() - t0
    times: list[float] = []
    t1 = time.perf_counter()
    while len(times) < runs:
        times.append(once(warm_runs + len(times)))
        if max_seconds is not None and time.perf_counter() - t1 >= max_seconds and len(times) >= min(runs, 5):
            break
    timing = "CUDA events around each run (GPU time)" if events else "perf_counter wall clock per run" + (
        ", synchronised" if runner.device_type == "cuda" else "")
    includes = runner.includes_host if host_io else runner.includes_device
    return times, warm_runs, warm_s, timing, includes


def _fidelity(runner: Runner, reference: str, pool: list[torch.Tensor], n_images: int) -> dict[str, Any]:
    from crdtool.bench.quality import parity_to_reference
    from crdtool.models.checkpoints import load_generator

    model = load_generator(reference).float().eval()
    outs, refs, seen = [], [], 0
    with torch.inference_mode():
        for x in pool:
            if seen >= n_images:
                break
            outs.append(runner(x))
            refs.append(model(x))
            seen += x.shape[0]
    return parity_to_reference(torch.cat(refs), torch.cat(outs)).to_dict() | {"reference": str(reference)}


def measure_latency(artifact: str | Path | BenchSpec, backend: str = "auto", batch: int = 1, size: int = 256,
                    warmup: str = "auto", runs: int = 200, threads: int | None = None, **kwargs: Any) -> LatencyResult:
    """Measure one (artifact, backend) in this process; a ``CrdError`` ends up in ``result.error``.

    Keyword options are ``BenchSpec`` fields (``max_seconds``, ``images``, ``host_io``, ``reference``, ...).
    """
    spec = artifact if isinstance(artifact, BenchSpec) else BenchSpec(
        str(artifact), backend, batch, size, str(warmup), runs, threads=threads, **kwargs)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load = load_avg()
    name = spec.name or Path(spec.artifact).name
    try:
        kind = artifact_kind(spec.artifact)
        be = default_backend(kind) if spec.backend == "auto" else parse_backend(spec.backend)
    except CrdError as e:
        return LatencyResult(spec.artifact, name, "?", spec.backend, "?", spec.batch, spec.size, error=str(e),
                             started=started, load_avg=load)
    threads = spec.threads or physical_cores()
    result = LatencyResult(spec.artifact, name, kind, be.label, be.precision, spec.batch, spec.size,
                           threads=threads if be.device_type == "cpu" else None, warmup=spec.warmup,
                           runs_requested=spec.runs, max_seconds=spec.max_seconds, started=started, load_avg=load,
                           device=device_info(be.device_type, threads if be.device_type == "cpu" else None),
                           versions=library_versions())
    try:
        if spec.batch < 1 or spec.runs < 1:
            raise CrdError("--batch and --runs must be >= 1")
        warm = Warmup.parse(spec.warmup)
        result.warmup = warm.describe()
        torch.set_num_threads(threads)
        runner = make_runner(spec.artifact, be, spec.batch, spec.size, threads, spec.onnx)
        result.precision = runner.precision
        n_batches = INPUT_POOL
        images, result.inputs = input_pool(n_batches * spec.batch, spec.size, spec.images, spec.artifact)
        pool = list(images.split(spec.batch))
        handles = [runner.upload(x) for x in pool]
        times, result.warmup_runs, result.warmup_s, result.timing, result.includes = _timed_loop(
            runner, handles, pool, warm, spec.runs, spec.max_seconds, spec.host_io)
        result.runs = len(times)
        result.times_ms = [round(t, 4) for t in times]
        for k, v in summarize(times, spec.batch).items():
            setattr(result, k, v)
    except CrdError as e:
        result.error = str(e)
        return result
    ref = spec.reference or (spec.artifact if kind == "torch" and be.label != "torch-cpu" else None)
    if ref and spec.fidelity_images > 0:
        try:
            result.fidelity = _fidelity(runner, ref, pool, spec.fidelity_images)
        except CrdError as e:  # the timing stands; say why fidelity is missing
            result.fidelity = {"reference": str(ref), "error": str(e)}
    return result


def _run_worker(spec: BenchSpec, timeout_s: float | None) -> LatencyResult:
    cmd = [sys.executable, "-m", "crdtool.bench.latency", "--worker", spec.to_json()]
    env = dict(os.environ)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return LatencyResult(spec.artifact, spec.name or Path(spec.artifact).name, "?", spec.backend, "?", spec.batch,
                             spec.size, error=f"measurement did not finish within {timeout_s:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return LatencyResult.from_dict(json.loads(line[len(RESULT_MARKER):]))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return LatencyResult(spec.artifact, spec.name or Path(spec.artifact).name, "?", spec.backend, "?", spec.batch,
                         spec.size, error=f"worker exited with {proc.returncode}: {tail[:300]}")


def expand_specs(artifacts: Sequence[str | Path | BenchSpec], backends: Sequence[str] = ("auto",),
                 **common: Any) -> list[BenchSpec]:
    """The cross product artifacts x backends; ``BenchSpec`` items are kept as they are."""
    out = []
    for a in artifacts:
        if isinstance(a, BenchSpec):
            out.append(a)
            continue
        for b in backends:
            out.append(BenchSpec(str(a), b, **common))
    return out


def bench_artifacts(artifacts: Sequence[str | Path | BenchSpec], backends: Sequence[str] = ("auto",), *,
                    isolate: bool = True, timeout_s: float | None = 3600,
                    on_start: Callable[[BenchSpec], None] | None = None,
                    on_result: Callable[[LatencyResult], None] | None = None,
                    command: str | None = None, floor_probe: bool = True, **common: Any) -> list[LatencyResult]:
    """Measure every (artifact, backend), each in a fresh process when ``isolate``; never raises for one
    failing measurement (its ``error`` says why). ``common`` are ``BenchSpec`` fields for all of them.

    A torch artifact on an ort backend is exported once to a temporary static-shape ONNX file (on an edge
    backend: converted once to that runtime's format). ``floor_probe`` times a dense fp32 matmul with the
    same thread count once per run, so each CPU result carries the rate its compute floor is measured by.
    """
    specs = expand_specs(artifacts, backends, **common)
    command = command if command is not None else current_command()
    results: list[LatencyResult] = []
    profiles: dict[tuple[str, int], ModelProfile | None] = {}  # (artifact, size) -> its profile, None if unknown
    rates: dict[int, float] = {}  # threads -> GMAC/s of the dense fp32 probe
    with tempfile.TemporaryDirectory(prefix="crdtool-bench-") as tmp:
        exported: dict[tuple[str, int, int], str] = {}
        for spec in specs:
            spec = dataclasses.replace(spec)
            if on_start:
                on_start(spec)
            error = None
            try:
                kind = artifact_kind(spec.artifact)
                be = default_backend(kind) if spec.backend == "auto" else parse_backend(spec.backend)
                spec.backend = be.label
                spec.reference = resolve_reference(spec.artifact, spec.reference)
                if kind == "torch" and be.framework == "onnx" and spec.onnx is None:
                    key = (spec.artifact, spec.batch, spec.size)
                    if key not in exported:
                        exported[key] = str(export_temp_onnx(spec.artifact, Path(tmp) / f"{len(exported)}.onnx",
                                                              spec.batch, spec.size))
                    spec.onnx = exported[key]
                elif kind == "torch" and be.framework in EDGE_BACKENDS and spec.onnx is None:
                    from crdtool.bench.edge import convert_for_backend

                    key = (spec.artifact + "@" + be.name, spec.batch, spec.size)
                    if key not in exported:
                        exported[key] = str(convert_for_backend(spec.artifact, be.name, Path(tmp), spec.batch,
                                                                spec.size))
                    spec.onnx = exported[key]
            except CrdError as e:
                error = str(e)
            if error is None:
                result = _run_worker(spec, timeout_s) if isolate else measure_latency(spec)
            else:
                result = LatencyResult(spec.artifact, spec.name or Path(spec.artifact).name, "?", spec.backend, "?",
                                       spec.batch, spec.size, error=error)
            pkey = (spec.reference or spec.artifact, spec.size)
            if result.ok and pkey not in profiles:  # a failed row shows no MACs (they were for a size it lacks)
                profiles[pkey] = profile_artifact(spec.artifact, spec.size, spec.reference)
            if result.ok and profiles[pkey] is not None:
                prof = profiles[pkey]
                result.macs, result.params = int(prof.total("literature")), int(prof.params)
                result.macs_exact = int(prof.total("exact"))
                if floor_probe and result.device.get("device") == "cpu":
                    key = result.threads or physical_cores()
                    if key not in rates:  # after the first CPU measurement, so imports and page-ins are done
                        rates[key] = probe_fma_rate(key).gmacs_per_s
                    result.fma_gmacs_per_s = rates[key]
            result.command = command
            results.append(result)
            if on_result:
                on_result(result)
    return results


def _worker_main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m crdtool.bench.latency --worker SPEC_JSON", file=sys.stderr)
        return 2
    result = measure_latency(BenchSpec.from_json(argv[1]))
    sys.stdout.write(RESULT_MARKER + json.dumps(result.to_dict()) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
