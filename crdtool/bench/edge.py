"""Runners for the edge runtimes: OpenVINO (CPU plugin), ExecuTorch with XNNPACK, ncnn.

Each follows :class:`crdtool.bench.runners.Runner`: inputs are converted to the runtime's format in
``upload`` (outside the timed region, like onnxruntime's numpy feed) and ``run`` is one inference.
A checkpoint benched on one of these backends is converted once into a temporary artifact
(``convert_for_backend``), the same way a checkpoint is exported to ONNX for ``ort-cpu``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from crdtool.bench.runners import Runner
from crdtool.errors import CrdError



def _precision_from_manifest(path: str | Path, default: str = "fp32") -> str:
    from crdtool.bench.artifacts import manifest_entry

    kind = manifest_entry(path).get("kind") or ""
    return "int8" if "int8" in kind else ("fp16" if "fp16" in kind else default)


def _check_shape(path: str | Path, declared: tuple[int, ...], batch: int, size: int) -> None:
    if len(declared) == 4 and all(d > 0 for d in declared) and tuple(declared) != (batch, declared[1], size, size):
        raise CrdError(f"{path} has a static input shape {list(declared)}; pass --batch {declared[0]} "
                       f"--size {declared[2]}")


class OpenVinoRunner(Runner):
    """A compiled OpenVINO model (IR or ONNX file): latency hint, one stream, fp32 inference precision."""

    def __init__(self, path: str | Path, threads: int | None, batch: int, size: int):
        from crdtool.deploy import openvino as ov

        self.sess = ov.IrSession(path, threads)
        _check_shape(path, self.sess.input_shape, batch, size)
        if Path(path).suffix == ".xml":
            self.precision = ov.describe(path).precision
        else:
            from crdtool.bench.runners import _onnx_info

            self.precision = _onnx_info(path)[0]
        self.fixed_batch = self.sess.input_shape[0] if self.sess.input_shape[0] > 0 else None

    def upload(self, x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(x.numpy(), np.float32)

    def run(self) -> None:
        self._out = self.sess.run(self._x)

    def output(self) -> torch.Tensor:
        return torch.from_numpy(np.array(self._out, np.float32, copy=True))


class ExecuTorchRunner(Runner):
    """An ExecuTorch program's ``forward`` (XNNPACK delegate inside); input is a contiguous CPU tensor."""

    def __init__(self, path: str | Path, threads: int | None, batch: int, size: int):
        from crdtool.deploy import executorch as et

        self.sess = et.PteSession(path, threads)
        _check_shape(path, self.sess.input_shape, batch, size)
        self.fixed_batch = self.sess.input_shape[0]
        self.precision = _precision_from_manifest(path, "int8" if ".int8." in Path(path).name else "fp32")

    def upload(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().contiguous()

    def run(self) -> None:
        self._out = self.sess.run_tensor(self._x)

    def output(self) -> torch.Tensor:
        return self._out.float().clone()


class NcnnRunner(Runner):
    """An ncnn Net with fp32 storage and arithmetic; one image per inference."""

    def __init__(self, path: str | Path, threads: int | None, batch: int, size: int):
        from crdtool.deploy import ncnn as ncnn_mod

        if batch != 1:
            raise CrdError("the ncnn backend runs one image at a time; pass --batch 1")
        self.sess = ncnn_mod.NcnnSession(path, threads)
        self.fixed_batch = 1

    def upload(self, x: torch.Tensor) -> Any:
        return self.sess._ncnn.Mat(np.ascontiguousarray(x.numpy()[0], np.float32))

    def run(self) -> None:
        from crdtool.deploy.ncnn import INPUT_BLOB, OUTPUT_BLOB

        ex = self.sess.net.create_extractor()
        ex.input(INPUT_BLOB, self._x)
        ret, self._out = ex.extract(OUTPUT_BLOB)
        if ret != 0:
            raise CrdError(f"ncnn extract failed ({ret})")

    def output(self) -> torch.Tensor:
        return torch.from_numpy(np.array(self._out, np.float32))[None]


def make_edge_runner(path: str | Path, backend: str, threads: int | None, batch: int, size: int) -> Runner:
    cls = {"openvino": OpenVinoRunner, "executorch": ExecuTorchRunner, "ncnn": NcnnRunner}[backend]
    return cls(path, threads, batch, size)


def convert_for_backend(checkpoint: str, backend: str, folder: Path, batch: int, size: int) -> Path:
    """A temporary fp32 artifact of ``checkpoint`` for an edge backend (OpenVINO reads the CPU-rewritten ONNX)."""
    from crdtool.models.checkpoints import load_generator

    model = load_generator(checkpoint)
    shape = (batch, model.spec.input_nc, size, size)
    stem = folder / f"{backend}-{len(list(folder.iterdir()))}"
    if backend == "openvino":
        from crdtool.bench.artifacts import export_temp_onnx
        from crdtool.deploy.openvino import convert_onnx

        onnx_path = export_temp_onnx(checkpoint, stem.with_suffix(".onnx"), batch, size)
        return convert_onnx(onnx_path, stem.with_suffix(".xml"))
    if backend == "executorch":
        from crdtool.deploy.executorch import export_pte

        return export_pte(model, stem.with_suffix(".pte"), shape).path
    from crdtool.deploy.ncnn import export_ncnn
    from crdtool.deploy.onnx import export_onnx

    onnx_path = export_onnx(model, stem.with_suffix(".onnx"), shape)
    return export_ncnn(onnx_path, Path(f"{stem}.ncnn.param"), shape)
