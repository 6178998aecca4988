"""Reduced-precision ONNX graphs that both onnxruntime (CPU) and a strongly typed TensorRT network accept.

- INT8: onnxruntime static quantization in QDQ form, symmetric int8 activations and weights (zero point 0),
  placed the way TensorRT's explicit quantization wants it: Q/DQ on the inputs and weights of Conv and
  ConvTranspose only (outputs stay float, biases stay float), and the Q/DQ pair moved above a Pad that
  feeds a conv so Pad + Conv can fuse. On the mobile student this placement also keeps ~10 dB more PSNR
  than quantizing every op.
- FP16: onnxruntime's ``convert_float_to_float16``: float16 weights and compute, float32 graph I/O, and ops
  that lose quality in float16 (normalisations, reductions) kept in float32 with Casts; nodes whose weights
  or activations float16 cannot hold stay float32 too.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from crdtool.errors import CrdError
from crdtool.fileio import atomic_path

QUANTIZED_OPS = ("Conv", "ConvTranspose")
KEEP_FP32_OPS = frozenset({"InstanceNormalization", "LayerNormalization", "GroupNormalization",
                           "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Softmax", "Pow", "Sqrt"})
FP16_SAFE_MAX = 32768.0  # activations or weights beyond this keep their node in float32 (fp16 max is 65504)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger ('consider pre-processing...')."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


Inputs = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


def each_input(images: Inputs) -> list[np.ndarray]:
    """One float32 (1, C, H, W) array per image, from a batch (N, C, H, W) or from a list of images that may
    differ in size (an SR graph's whole LR images), each (C, H, W) or (1, C, H, W)."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        items: Sequence = [images[i:i + 1] for i in range(len(images))]
    else:
        items = images
    out = []
    for t in items:
        a = t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float32)
        out.append(np.ascontiguousarray(a[None] if a.ndim == 3 else a, dtype=np.float32))
    return out


def _calibration_reader(input_name: str, images: Inputs):
    from onnxruntime.quantization import CalibrationDataReader

    xs = each_input(images)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(xs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

        def rewind(self) -> None:
            self._it = iter(xs)

    return _Reader()


def quantize_int8_qdq(onnx_in: str | Path, onnx_out: str | Path, calib_images: Inputs, *,
                      per_channel: bool = True, move_qdq_above_pad: bool = True) -> Path:
    """Static int8 QDQ model of ``onnx_in`` calibrated (min/max) on ``calib_images``: (N, 3, H, W) in the
    model's input range ([-1, 1] for the image-to-image generators), or a list of images of different sizes
    for a dynamic graph (an SR model's LR images in [0, 1]).

    Symmetric int8 for activations and weights, so the graph is also a TensorRT explicit-quantization input.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx_out = Path(onnx_out)
    if len(calib_images) == 0:
        raise CrdError("INT8 calibration needs at least one image")
    input_name = onnx.load(str(onnx_in), load_external_data=False).graph.input[0].name
    with atomic_path(onnx_out) as tmp:
        with _quiet_root_logger():
            quantize_static(
                str(onnx_in), str(tmp), _calibration_reader(input_name, calib_images),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=list(QUANTIZED_OPS),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                               "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)})
        if move_qdq_above_pad:
            model = onnx.load(str(tmp))
            if hoist_qdq_above_pad(model):
                onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return onnx_out


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def _pad_keeps_quantization(pad, initializers: dict) -> bool:
    """Reflect/edge padding repeats values; constant padding with 0 adds an exactly representable value."""
    from onnx import helper, numpy_helper

    mode = next((helper.get_attribute_value(a) for a in pad.attribute if a.name == "mode"), b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return True
    if len(pad.input) < 3 or not pad.input[2]:
        return True
    value = initializers.get(pad.input[2])
    return value is not None and not np.any(numpy_helper.to_array(value))


def hoist_qdq_above_pad(model) -> int:
    """Rewrite ``X -> Pad -> Q -> DQ -> Conv`` as ``X -> Q -> DQ -> Pad -> Conv``; returns how many were moved.

    Same numbers (padding commutes with per-tensor symmetric quantization, and the calibrated range of the
    padded tensor is that of X), but TensorRT can now fuse the Pad into the quantized convolution.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    moved = 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        pad = producer.get(q.input[0])
        if pad is None or pad.op_type != "Pad" or q.input[0] in graph_outputs:
            continue
        if len(consumers[pad.output[0]]) != 1 or not _pad_keeps_quantization(pad, inits):
            continue
        dqs = consumers[q.output[0]]
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" or q.output[0] in graph_outputs:
            continue
        dq = dqs[0]
        users = consumers[dq.output[0]]
        if not users or dq.output[0] in graph_outputs or any(u.op_type not in QUANTIZED_OPS for u in users):
            continue
        x, padded = pad.input[0], pad.output[0]
        q.input[0] = x
        pad.input[0] = dq.output[0]
        for u in users:
            for i, name in enumerate(u.input):
                if name == dq.output[0]:
                    u.input[i] = padded
        moved += 1
    if moved:
        _topological_sort(graph)
    return moved


def _topological_sort(graph) -> None:
    """Re-order nodes after a rewrite so every input is produced before it is used (the checker insists)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise CrdError("graph rewrite produced a cycle (a bug); please report it")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


# ----------------------------------------------------------------------------------------------- FP16


def _activation_peaks(model, sample_inputs: Inputs) -> dict[str, float]:
    """Max |value| of every float intermediate tensor on ``sample_inputs`` (fp32 onnxruntime run)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for vi in probe.graph.value_info:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and vi.name not in known:
            probe.graph.output.append(vi)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    peaks: dict[str, float] = defaultdict(float)
    for x in each_input(sample_inputs):
        for name, value in zip(names, sess.run(names, {sess.get_inputs()[0].name: x})):
            peaks[name] = max(peaks[name], float(np.max(np.abs(value))) if value.size else 0.0)
    return peaks


def out_of_range_nodes(model, sample_inputs: Inputs | None = None) -> list[str]:
    """Names of nodes float16 cannot hold: a weight, or (on ``sample_inputs``) an output, beyond
    ``FP16_SAFE_MAX``. onnxruntime's converter only clamps such values to 65504, which silently turns
    a model with large activations into garbage (``test_fp16_keeps_nodes_with_out_of_range_values_fp32``),
    so these nodes stay float32."""
    from onnx import TensorProto, numpy_helper

    big = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and t.dims
           and float(np.max(np.abs(numpy_helper.to_array(t)), initial=0.0)) > FP16_SAFE_MAX}
    peaks = {}
    if sample_inputs is not None:
        peaks = _activation_peaks(model, sample_inputs)
    return [n.name for n in model.graph.node if any(i in big for i in n.input)
            or any(peaks.get(o, 0.0) > FP16_SAFE_MAX for o in n.output)]


def _keep_blocked_nodes_fp32(half, original) -> None:
    """Undo two float16 round trips onnxruntime's converter puts on blocked (float32) nodes.

    It stores every float weight as float16 and Casts it back, and it Casts each blocked node's output
    to float16 and back before the next blocked node reads it. For the out-of-range nodes both overflow
    (``test_fp16_keeps_nodes_with_out_of_range_values_fp32`` sees NaN): their weights are read from the
    original float32 initializers instead, and a float32 -> float16 -> float32 Cast pair becomes an Identity.
    """
    from onnx import TensorProto, helper

    graph = half.graph
    produced = {o: n for n in graph.node for o in n.output}
    fp32_weights = {t.name: t for t in original.graph.initializer if t.data_type == TensorProto.FLOAT}
    half_inits = {t.name for t in graph.initializer}

    def cast_to(node) -> int | None:
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), None)

    restored: set[str] = set()
    for node in graph.node:
        if node.op_type != "Cast" or cast_to(node) != TensorProto.FLOAT:
            continue
        src = node.input[0]
        before = produced.get(src)
        if before is not None and before.op_type == "Cast" and cast_to(before) == TensorProto.FLOAT16:
            node.input[0] = before.input[0]
        elif src in fp32_weights and src in half_inits:
            node.input[0] = f"{src}__fp32"
            if src not in restored:
                restored.add(src)
                copy = TensorProto()
                copy.CopyFrom(fp32_weights[src])
                copy.name = node.input[0]
                graph.initializer.append(copy)
        else:
            continue
        node.op_type = "Identity"
        del node.attribute[:]
    # drop what nothing reads any more (the orphaned Casts and float16 weight copies)
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def convert_fp16(onnx_in: str | Path, onnx_out: str | Path, *, keep_fp32_ops: Iterable[str] = KEEP_FP32_OPS,
                 sample_inputs: Inputs | None = None) -> Path:
    """Float16 copy of an fp32 graph with float32 inputs/outputs (onnxruntime's converter).

    Nodes of ``keep_fp32_ops`` and the ``out_of_range_nodes`` stay float32, with Casts at the boundaries.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx_out = Path(onnx_out)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_in)))
    for k, node in enumerate(model.graph.node):  # the block list names nodes: give every node a name
        node.name = node.name or f"{node.op_type}_{k}"
    with _quiet_root_logger():
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=sorted(set(keep_fp32_ops)),
                                        node_block_list=out_of_range_nodes(model, sample_inputs))
    _topological_sort(half.graph)  # the converter appends its input Casts at the end of the node list
    _keep_blocked_nodes_fp32(half, model)
    del half.graph.value_info[:]  # it also leaves stale float16 types on tensors that stayed float32
    half = onnx.shape_inference.infer_shapes(half)
    with atomic_path(onnx_out) as tmp:
        onnx.save(half, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return onnx_out


def count_ops(onnx_path: str | Path, op_types: Sequence[str]) -> dict[str, int]:
    """How many nodes of each type a graph holds (tests and the manifest use it)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {op: sum(n.op_type == op for n in graph.node) for op in op_types}
