"""Benchmarks: latency per backend (``latency``, ``runners``), FID/KID and fidelity (``quality``), tables and
plots (``report``)."""

from crdtool.bench.latency import BenchSpec, LatencyResult, bench_artifacts, measure_latency
from crdtool.bench.dispatch import make_runner
from crdtool.bench.runners import Backend, parse_backend

__all__ = ["Backend", "BenchSpec", "LatencyResult", "bench_artifacts", "make_runner", "measure_latency",
           "parse_backend"]
