"""OpenVINO IR (``.xml`` + ``.bin``) from the exported ONNX graph: convert, int8 with NNCF, run.

OpenVINO's CPU plugin runs every op of the generators natively (InstanceNorm is recognised as MVN,
reflection padding as Pad), so no graph rewrite is needed. Two defaults would silently change the numbers
and are switched off here: ``save_model`` compresses weights to fp16 unless told not to, and on CPUs with
bf16/AMX the plugin infers in bf16 unless ``INFERENCE_PRECISION_HINT`` is f32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crdtool.errors import CrdError

IR_SUFFIX = ".xml"


def available() -> str | None:
    """None when OpenVINO can be used here, else a one-line reason."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "OpenVINO is not installed; pip install -e '.[edge]'"
    return None


def _require() -> Any:
    reason = available()
    if reason:
        raise CrdError(reason)
    import openvino

    return openvino


def weights_path(xml: str | Path) -> Path:
    return Path(xml).with_suffix(".bin")


def _save(model: Any, xml: Path) -> Path:
    """Save IR next to its weights; both are written under temporary names, then moved into place."""
    ov = _require()
    xml = Path(xml)
    tmp_xml = xml.with_name(f".{xml.stem}.tmp.xml")
    try:
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        weights_path(tmp_xml).replace(weights_path(xml))
        tmp_xml.replace(xml)
    finally:
        for p in (tmp_xml, weights_path(tmp_xml)):
            p.unlink(missing_ok=True)
    return xml


def convert_onnx(onnx_path: str | Path, xml: str | Path) -> Path:
    """ONNX -> OpenVINO IR with fp32 weights kept as they are."""
    ov = _require()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # OpenVINO raises its own exception types
        raise CrdError(f"OpenVINO cannot convert {onnx_path}: {str(e).splitlines()[0][:200]}") from e
    return _save(model, Path(xml))


def quantize_int8(xml_in: str | Path, xml_out: str | Path, calib: torch.Tensor) -> Path:
    """NNCF post-training quantization (the CPU plugin's int8: u8 activations, i8 weights), calibrated on
    ``calib`` (N, 3, H, W in [-1, 1]), one image at a time as the static graph takes them."""
    ov = _require()
    try:
        import nncf
    except ImportError as e:
        raise CrdError("NNCF is not installed (OpenVINO int8 needs it); pip install -e '.[edge]'") from e
    model = ov.Core().read_model(str(xml_in))
    batch = int(model.input(0).get_partial_shape()[0].get_length()) if model.input(0).get_partial_shape()[0].is_static \
        else 1
    samples = [calib[i:i + batch].float().numpy() for i in range(0, len(calib) - batch + 1, batch)]
    # MatMuls stay fp32: in these generators they are only the colour skip's per-pixel 3x3 colour matrix and
    # its small MLP, which int8 ruins (a distilled vintagify student: 30.3 dB against fp32 PyTorch with them
    # quantized, 36.0 dB without, at the same speed); the convolutions, the whole cost, are still int8.
    # MIXED: asymmetric activations (a zero point), which fit the one-sided ranges after ReLU, InstanceNorm's
    # shifted outputs and the input photo better than PERFORMANCE's symmetric ones: a distilled vintagify
    # student goes from 35.7 to 38.6 dB over 32 photos for 5% more int8 time, still 1.3x faster than fp32
    # (benchmarks/results/openvino_int8_presets.md)
    q = nncf.quantize(model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                      subset_size=len(samples), ignored_scope=nncf.IgnoredScope(types=["MatMul"], validate=False))
    return _save(q, Path(xml_out))


@dataclass
class IrInfo:
    path: Path
    precision: str
    ops: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "weights": weights_path(self.path).name, "ops": self.ops}


def describe(xml: str | Path) -> IrInfo:
    """Op counts of an IR; int8 when NNCF inserted FakeQuantize/FakeConvert nodes."""
    ov = _require()
    ops: dict[str, int] = {}
    for node in ov.Core().read_model(str(xml)).get_ordered_ops():
        t = node.get_type_name()
        ops[t] = ops.get(t, 0) + 1
    precision = "int8" if ops.get("FakeQuantize") or ops.get("FakeConvert") else "fp32"
    return IrInfo(Path(xml), precision, dict(sorted(ops.items())))


class IrSession:
    """A compiled model on the CPU plugin, latency mode, fp32 inference, ``threads`` streams' worth of cores."""

    def __init__(self, model_path: str | Path, threads: int | None = None):
        ov = _require()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                  "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        except Exception as e:
            raise CrdError(f"OpenVINO cannot compile {model_path}: {str(e).splitlines()[0][:200]}") from e
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.input(0).get_partial_shape()
        self.input_shape = tuple(int(d.get_length()) if d.is_static else -1 for d in shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(x, np.float32)}, share_inputs=True)
        return self.request.get_output_tensor(0).data

    def run_copy(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.run(x), dtype=np.float32, copy=True)


def run_ir(model_path: str | Path, images: torch.Tensor, threads: int | None = None) -> np.ndarray:
    """Outputs for ``images`` (N, 3, H, W), one image at a time (the exported graphs have a static batch 1)."""
    sess = IrSession(model_path, threads)
    x = images.detach().cpu().float().numpy()
    return np.concatenate([sess.run_copy(x[i:i + 1]) for i in range(len(x))])
