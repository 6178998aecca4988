"""The compute floor: how fast this CPU multiply-adds in fp32 right now, and what that means per model.

A dense fp32 matmul (1024 x 1024 x 1024, MKL/oneDNN through torch) runs close to the cores' FMA peak, and so
does the teacher's 3x3 convolution body. Timing it in the same run as the models, with the same thread
count, gives a rate that is disturbed by the same neighbours; ``floor_ms = exact MACs / rate`` is then the
latency a model would have if every multiply-add ran at that rate, and ``floor_ms / median_ms`` is the
fraction of the floor a backend reaches (1.0 = as efficient as a dense matmul).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from crdtool.bench.env import load_avg

PROBE_N = 1024  # one 1024^3 matmul = 1.07 G multiply-adds: long enough to time, short enough to repeat


@dataclass
class FmaProbe:
    gmacs_per_s: float  # best repetition: the least disturbed estimate of the rate
    median_gmacs_per_s: float
    threads: int
    method: str
    repeats: int
    load_avg: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def floor_ms(self, macs: int | None) -> float | None:
        return None if not macs or not self.gmacs_per_s else macs / (self.gmacs_per_s * 1e6)


def probe_fma_rate(threads: int, seconds: float = 0.6, n: int = PROBE_N) -> FmaProbe:
    """fp32 multiply-add rate of a dense matmul on ``threads`` threads (torch's intra-op pool, restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        out = torch.empty(n, n)
        for _ in range(2):  # warm-up: thread pool start, page faults
            torch.mm(a, b, out=out)
        rates, t_end = [], time.perf_counter() + seconds
        while len(rates) < 3 or (time.perf_counter() < t_end and len(rates) < 200):
            t0 = time.perf_counter_ns()
            torch.mm(a, b, out=out)
            rates.append(n**3 / ((time.perf_counter_ns() - t0) / 1e9) / 1e9)
    finally:
        torch.set_num_threads(before)
    rates.sort()
    return FmaProbe(round(rates[-1], 2), round(rates[len(rates) // 2], 2), int(threads),
                    f"torch.mm fp32 {n}x{n}x{n}, best of {len(rates)}", len(rates), load_avg())
