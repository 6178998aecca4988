"""``crdtool bench ARTIFACT --psnr --data SET``: an SR artifact scored as SR papers score, and timed on
the frames SR runs on (a 320x180 -> 1280x720 video frame and a 256x256 LR tile).

Artifacts: an exported ``.onnx`` (onnxruntime, CPU; the graph must be dynamic, as ``crdtool export``
writes SR graphs) or a PyTorch generator file / run folder (including Real-ESRGAN / ESRGAN releases).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crdtool.data.sr import load_eval_set
from crdtool.errors import CrdError
from crdtool.metrics.sr import evaluate_sr

FRAME_SIZES: tuple[tuple[int, int], ...] = ((180, 320), (256, 256))  # (h, w) LR inputs


def sr_upscaler(artifact: str | Path, threads: int | None = None) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """(function 1x3xhxw [0, 1] -> 1x3xHxW, backend name) for an ``.onnx`` or a PyTorch SR generator."""
    artifact = Path(artifact)
    if artifact.suffix == ".onnx":
        from crdtool.deploy.onnx import ort_session

        sess = ort_session(artifact, threads)
        name = sess.get_inputs()[0].name
        dims = sess.get_inputs()[0].shape[2:]
        if all(isinstance(d, int) for d in dims):
            raise CrdError(f"{artifact.name} has a fixed {dims[0]}x{dims[1]} input; SR evaluation needs a dynamic "
                           "graph (crdtool export writes SR graphs dynamic)")

        def run_ort(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.numpy().astype(np.float32)})[0])

        return run_ort, "ort-cpu"
    from crdtool.deploy.sr import load_sr_generator

    model = load_sr_generator(artifact).eval()
    if threads:
        torch.set_num_threads(threads)

    def run_torch(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return run_torch, "torch-cpu"


def sr_quality(artifact: str | Path, data: str | Path, scale: int = 4, max_images: int | None = None,
               threads: int | None = None) -> dict[str, Any]:
    """PSNR-Y / SSIM-Y of the artifact's outputs on one benchmark set (``data``: e.g. ``.../Set5``)."""
    upscale, backend = sr_upscaler(artifact, threads)
    pairs = load_eval_set(data, scale, max_images=max_images)
    score, _ = evaluate_sr(upscale, pairs, scale)
    return {"artifact": str(artifact), "backend": backend, "set": Path(data).name, "scale": scale,
            "images": len(pairs), **score.to_dict()}


def sr_latency(artifact: str | Path, sizes: Sequence[tuple[int, int]] = FRAME_SIZES, runs: int = 10,
               warmup: int = 2, threads: int | None = None) -> list[dict[str, Any]]:
    """Median / min wall-clock ms per LR input size (batch 1), after ``warmup`` untimed runs."""
    upscale, backend = sr_upscaler(artifact, threads)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=gen)
        for _ in range(warmup):
            y = upscale(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            y = upscale(x)
            times.append((time.perf_counter() - t0) * 1000)
        rows.append({"input": [h, w], "output": list(y.shape[2:]), "backend": backend, "runs": runs,
                     "median_ms": statistics.median(times), "min_ms": min(times)})
    return rows
