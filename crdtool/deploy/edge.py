"""The edge-runtime artifacts of ``crdtool export``: OpenVINO IR, ExecuTorch/XNNPACK .pte, ncnn; fp32 and int8.

Each artifact is run by its own runtime on the verification images and compared with PyTorch exactly like
the ONNX graph: an fp32 artifact above the ONNX max-abs gate is refused (CrdError, nothing written), an int8
one is measured (PSNR) and flagged by the caller when low. A runtime that is not installed is refused with
the package to install. ``export_artifacts`` records what this returns and publishes the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from crdtool.deploy import onnx as onnx_mod
from crdtool.errors import CrdError

EDGE_KIND_BACKEND = {"openvino-fp32": "openvino-cpu", "openvino-int8": "openvino-cpu",
                     "pte-fp32": "executorch-xnnpack", "pte-int8": "executorch-xnnpack", "ncnn-fp32": "ncnn-cpu"}


@dataclass
class EdgeArtifact:
    kind: str
    path: Path
    parity: onnx_mod.Parity
    extra: dict[str, Any] = field(default_factory=dict)
    companions: list[Path] = field(default_factory=list)  # files that travel with ``path`` (weights)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _gate(kind: str, parity: onnx_mod.Parity, source: str) -> None:
    if kind.endswith("fp32"):
        onnx_mod.check_fp32_parity(parity, f"the {kind} export of {source}")


def build_edge_artifacts(model: nn.Module, staging: Path, stem: str, shape: tuple[int, ...], *, plain_onnx: Path,
                         reference: np.ndarray, verify: torch.Tensor, calib: torch.Tensor | None,
                         openvino: bool = False, executorch: bool = False, ncnn: bool = False,
                         dynamic: bool = False, source_name: str = "the model") -> list[EdgeArtifact]:
    """Build, run and check the requested edge artifacts in ``staging``; int8 variants when ``calib`` is given
    (OpenVINO: NNCF; ExecuTorch: the XNNPACK quantizer). ncnn is fp32 only."""
    if dynamic and (executorch or ncnn):
        raise CrdError("--executorch and --ncnn export a fixed input shape; drop --dynamic (or export them apart)")
    out: list[EdgeArtifact] = []
    if openvino:
        from crdtool.deploy import openvino as ov

        xml = ov.convert_onnx(plain_onnx, staging / f"{stem}.xml")
        extra = {"openvino": _version("openvino"), "from": "the plain ONNX export", "inference_precision": "f32",
                 **ov.describe(xml).to_dict()}
        parity = onnx_mod.measure_parity(reference, ov.run_ir(xml, verify))
        _gate("openvino-fp32", parity, source_name)
        out.append(EdgeArtifact("openvino-fp32", xml, parity, extra, [ov.weights_path(xml)]))
        if calib is not None:
            q = ov.quantize_int8(xml, staging / f"{stem}.int8.xml", calib)
            extra = {"openvino": _version("openvino"), "nncf": _version("nncf"),
                     "method": "NNCF PTQ (mixed preset: symmetric int8 weights, asymmetric u8 activations; "
                               "MatMuls fp32)",
                     "calibration_images": int(len(calib)), **ov.describe(q).to_dict()}
            out.append(EdgeArtifact("openvino-int8", q, onnx_mod.measure_parity(reference, ov.run_ir(q, verify)),
                                    extra, [ov.weights_path(q)]))
    if ncnn:
        from crdtool.deploy import ncnn as ncnn_mod

        param = ncnn_mod.export_ncnn(plain_onnx, staging / f"{stem}{ncnn_mod.PARAM_SUFFIX}", shape)
        parity = onnx_mod.measure_parity(reference, ncnn_mod.run_ncnn(param, verify))
        _gate("ncnn-fp32", parity, source_name)
        out.append(EdgeArtifact("ncnn-fp32", param, parity,
                                {"ncnn": _version("ncnn"), "pnnx": _version("pnnx"),
                                 **ncnn_mod.NcnnInfo(param, ncnn_mod.layer_types(param)).to_dict()},
                                [ncnn_mod.bin_path(param)]))
    if executorch:
        from crdtool.deploy import executorch as et

        info = et.export_pte(model, staging / f"{stem}.pte", shape)
        parity = onnx_mod.measure_parity(reference, et.run_pte(info.path, verify))
        _gate("pte-fp32", parity, source_name)
        out.append(EdgeArtifact("pte-fp32", info.path, parity,
                                {"executorch": _version("executorch"), "delegate": "XNNPACK", **info.to_dict()}))
        if calib is not None:
            qinfo = et.export_pte(model, staging / f"{stem}.int8.pte", shape, calib=calib)
            out.append(EdgeArtifact("pte-int8", qinfo.path,
                                    onnx_mod.measure_parity(reference, et.run_pte(qinfo.path, verify)),
                                    {"executorch": _version("executorch"), "delegate": "XNNPACK",
                                     "quantizer": "XNNPACKQuantizer symmetric, per-channel weights",
                                     "calibration_images": int(len(calib)), **qinfo.to_dict()}))
    return out
