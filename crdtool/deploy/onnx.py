"""ONNX export with the dynamo exporter, and parity checks of any ONNX graph against PyTorch.

``torch.onnx.export(verify=True)`` is no usable gate for tanh generators (relative error explodes near 0),
so parity here is max/mean absolute error and PSNR over the [-1, 1] output range, measured on real images.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from crdtool.errors import CrdError
from crdtool.fileio import atomic_path
from crdtool.metrics.fidelity import pooled_psnr

INPUT_NAME = "input"
OUTPUT_NAME = "output"
OPSET = 20
FP32_MAX_ABS = 1e-4  # an fp32 graph that differs more than this from PyTorch is refused


@dataclass(frozen=True)
class Parity:
    """How far a backend's outputs are from the PyTorch fp32 outputs on the same inputs."""

    max_abs: float
    mean_abs: float
    psnr_db: float  # metrics.fidelity.pooled_psnr; inf when identical
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs": self.max_abs, "mean_abs": self.mean_abs,
                "psnr_db": None if math.isinf(self.psnr_db) else round(self.psnr_db, 3), "n_images": self.n_images}


def measure_parity(reference: np.ndarray, output: np.ndarray) -> Parity:
    """Parity of ``output`` against ``reference`` (both N x C x H x W in [-1, 1])."""
    if reference.shape != output.shape:
        raise CrdError(f"output shape {tuple(output.shape)} differs from the PyTorch output {tuple(reference.shape)}")
    diff = output.astype(np.float64) - reference.astype(np.float64)
    if not np.all(np.isfinite(diff)):
        return Parity(math.inf, math.inf, -math.inf, len(reference))
    return Parity(float(np.max(np.abs(diff))), float(np.mean(np.abs(diff))), pooled_psnr(reference, output),
                  len(reference))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs warnings (missing torchvision ops, deprecations) that say nothing about our graph."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU eval copy, so export never changes the caller's module (device, mode, dtype)."""
    return copy.deepcopy(model).to("cpu", torch.float32).eval()


def export_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int] = (1, 3, 256, 256),
                dynamic: bool = False) -> Path:
    """Export ``model`` to one self-contained ``.onnx`` file (written atomically) and run the full checker.

    Static shape by default (what TensorRT and the benchmarks want); ``dynamic=True`` makes batch, height and
    width symbolic (sides must still be multiples of the generator's stride at run time).
    """
    import onnx

    path = Path(path)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4:
        raise CrdError(f"input_shape must be (N, C, H, W), got {shape}")
    net = cpu_eval_copy(model)
    example = torch.zeros(shape)
    kwargs: dict[str, Any] = {}
    if dynamic:
        from torch.export import Dim

        kwargs["dynamic_shapes"] = ({0: Dim("batch"), 2: Dim("height"), 3: Dim("width")},)
    with atomic_path(path) as tmp:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(net, (example,), str(tmp), dynamo=True, external_data=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False, **kwargs)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise CrdError(f"exported ONNX graph failed onnx.checker: {str(e).splitlines()[0]}") from e
    return path


def ort_session(onnx_path: str | Path, threads: int | None = None):
    """A CPU onnxruntime session with all graph optimisations and quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise CrdError(f"onnxruntime cannot load {onnx_path}: {str(e).splitlines()[0][:300]}") from e


def run_onnx(onnx_path: str | Path, images: torch.Tensor | np.ndarray, threads: int | None = None) -> np.ndarray:
    """Run ``images`` (N, 3, H, W in [-1, 1]) through the graph one at a time (works for static batch 1)."""
    sess = ort_session(onnx_path, threads)
    inp = sess.get_inputs()[0]
    x = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, np.float32)
    want = [d if isinstance(d, int) else None for d in inp.shape]
    if want[2:] != [None, None] and tuple(want[2:]) != tuple(x.shape[2:]):
        raise CrdError(f"{Path(onnx_path).name} takes {want[2]}x{want[3]} inputs, got images of "
                       f"{x.shape[2]}x{x.shape[3]}")
    return np.concatenate([sess.run(None, {inp.name: x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float32)


@torch.no_grad()
def reference_outputs(model: nn.Module, images: torch.Tensor, batch: int = 4) -> np.ndarray:
    """The PyTorch fp32 CPU outputs every exported artifact is compared against."""
    net = cpu_eval_copy(model)
    x = images.detach().cpu().float()
    return torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def verify_onnx(model: nn.Module, onnx_path: str | Path, images: torch.Tensor,
                reference: np.ndarray | None = None) -> Parity:
    """onnxruntime (CPU) vs PyTorch on ``images``; pass ``reference`` to reuse PyTorch outputs across graphs."""
    ref = reference_outputs(model, images) if reference is None else reference
    return measure_parity(ref, run_onnx(onnx_path, images))


def check_fp32_parity(parity: Parity, what: str, tol: float = FP32_MAX_ABS) -> None:
    """The export gate: an fp32 artifact must compute what PyTorch computes."""
    if not parity.max_abs <= tol:
        raise CrdError(f"{what} does not match PyTorch: max abs error {parity.max_abs:.3g} > {tol:g} "
                       f"(PSNR {parity.psnr_db:.1f} dB); not writing it")
