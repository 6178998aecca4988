"""Pick the runner for an artifact and a backend.

Kept apart from ``runners`` because the edge runners build on ``runners`` and ``artifacts``: choosing
among all of them sits one level above both.
"""

from __future__ import annotations

from pathlib import Path

from crdtool.bench.edge import make_edge_runner
from crdtool.bench.runners import (EDGE_BACKENDS, Backend, OrtRunner, Runner, TensorRTRunner, TorchRunner,
                                   artifact_kind, check_compatible)
from crdtool.errors import CrdError


def make_runner(artifact: str | Path, backend: Backend, batch: int = 1, size: int = 256,
                threads: int | None = None, onnx: str | Path | None = None) -> Runner:
    """The runner for ``artifact`` on ``backend`` (a torch artifact on an ort or edge backend needs ``onnx``,
    the file it was exported or converted to)."""
    kind = artifact_kind(artifact)
    check_compatible(kind, backend, artifact)
    if backend.framework == "torch":
        from crdtool.models.checkpoints import load_generator

        return TorchRunner(load_generator(artifact), backend)
    if backend.framework == "onnx":
        path = artifact if kind == "onnx" else onnx
        if path is None:
            raise CrdError(f"{artifact} must be exported to ONNX before running on {backend.label}")
        return OrtRunner(path, backend, threads, batch, size)
    if backend.framework in EDGE_BACKENDS:
        path = onnx if kind == "torch" else artifact
        if path is None:
            raise CrdError(f"{artifact} must be converted before running on {backend.label}")
        return make_edge_runner(path, backend.name, threads, batch, size)
    return TensorRTRunner(artifact, batch, size)
