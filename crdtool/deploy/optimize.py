"""Exact ONNX graph rewrites that make the crdtool generators run faster in onnxruntime on CPU.

Why: onnxruntime's CPU provider runs convolutions in a blocked NCHWc layout (16 channels per block on
AVX-512 CPUs such as this AMD EPYC, 8 on AVX2-only ones) and pads every conv's output channels up to a whole
block. The generators' 7x7 head conv (ngf -> 3 channels at full resolution) therefore computes 16 channels
to keep 3, and was the largest single node of the mobile student's profile.

Each rewrite replaces a node by ops that compute the same sums of the same products (the extra terms are
exact zeros), so the fp32 output moves only by float rounding order (~1e-6 max abs, measured). Nodes a
rewrite does not recognise are left as they are, so the pass is safe on every generator family (resnet,
mobile_resnet, unet, searched) and on static or dynamic input shapes.

``optimize_for_cpu(onnx_in, onnx_out)`` applies ``DEFAULT_REWRITES`` to a file; ``optimize_model`` works on
an ``onnx.ModelProto`` and reports how many sites each rewrite changed. What it gains, per model and
thread setting, is measured by ``benchmarks/optimize_cpu.py`` into ``benchmarks/results/optimize-cpu.md``
(mobile_resnet ngf16 at 1x3x256x256, single-thread CPU time per image: 30.65 -> 23.45 ms median; resnet
ngf64 teacher: 509.4 -> 491.19 ms).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from crdtool.errors import CrdError
from crdtool.fileio import atomic_path

MAX_NARROW_OUT = 4  # 4 phases x Cout output channels must fit one 16-lane NCHWc block
MIN_OPSET = 13  # DepthToSpace "mode" and SpaceToDepth as used here


class _Graph:
    """An onnx model being rewritten in place, plus the look-ups the rewrites need."""

    def __init__(self, model) -> None:
        import onnx

        self.model = model
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.shapes: dict[str, list[int | None]] = {}  # static dims where shape inference knows them
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        self._names = {n.name for n in self.graph.node} | {o for n in self.graph.node for o in n.output}
        self._names |= set(self.inits) | {i.name for i in self.graph.input}

    def fresh(self, base: str) -> str:
        """A tensor/node name not used anywhere in the graph yet."""
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def array(self, name: str) -> np.ndarray | None:
        """The value of a constant input (initializer), or None when it is computed at run time."""
        from onnx import numpy_helper

        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def add_init(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        t = numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.graph.initializer.append(t)
        self.inits[name] = t
        return name

    def consumers(self, tensor: str) -> list:
        return [n for n in self.graph.node if tensor in n.input]

    def replace(self, node, new_nodes: list) -> None:
        """Put ``new_nodes`` where ``node`` was (keeps the topological order)."""
        nodes = self.graph.node
        idx = list(nodes).index(node)
        del nodes[idx]
        for j, n in enumerate(new_nodes):
            nodes.insert(idx + j, n)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is_plain_2d(attrs: dict, kernel: tuple[int, int]) -> bool:
    """2-D, dilation 1, explicit (NOTSET) padding: the only case the rewrites derive weights for."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    dil = list(attrs.get("dilations", [1, 1]))
    ks = list(attrs.get("kernel_shape", kernel))
    return auto_pad == "NOTSET" and dil == [1, 1] and tuple(ks) == tuple(kernel)


# ------------------------------------------------------------------------------------------ rewrites

def _constant_weight_nodes(g: _Graph, op_type: str):
    """(node, 4-D weight, bias or None) of each ``op_type`` node whose weight and bias are constants.

    The node list is taken first, so a rewrite may add and remove nodes while the caller iterates.
    """
    for node in [n for n in g.graph.node if n.op_type == op_type and n.domain in ("", "ai.onnx")]:
        w = g.array(node.input[1])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = g.array(node.input[2]) if has_bias else None
        if w is None or w.ndim != 4 or (has_bias and bias is None):
            continue
        yield node, w, bias


def convtranspose_to_conv_d2s(g: _Graph) -> int:
    """Stride-s ``ConvTranspose`` with output exactly s x input -> ``Conv`` (s*s*Cout outs) + ``DepthToSpace``.

    Why it was tried: onnxruntime has no NCHWc ConvTranspose (its col2im path is single-threaded). Output
    pixel (s*i + a, s*j + b) only sees the kernel taps of phase (a, b), so the layer equals s*s stride-1
    convs over the same input, stacked as channels and interleaved by DepthToSpace (DCR); missing taps are
    zero weights. NOT in ``DEFAULT_REWRITES``: the zero taps (16 vs 9 for k3, 36 vs 16 for the unet's k4) and
    the single-threaded DepthToSpace cost what the faster conv saves: on a 2-core CPU it made the mobile
    student, the resnet teacher and the unet slower (no committed results file: the figures are not quoted).
    Kept (opt-in, tested) for machines with many threads, where the serial col2im may dominate.
    """
    from onnx import helper

    count = 0
    for node, w, bias in _constant_weight_nodes(g, "ConvTranspose"):
        a = _attrs(node)
        kh, kw = int(w.shape[2]), int(w.shape[3])
        strides = list(a.get("strides", [1, 1]))
        if (not _is_plain_2d(a, (kh, kw)) or int(a.get("group", 1)) != 1 or "output_shape" in a
                or strides[0] != strides[1] or strides[0] < 2):
            continue
        s = int(strides[0])
        pads = list(a.get("pads", [0, 0, 0, 0]))
        opad = list(a.get("output_padding", [0, 0]))
        # the output is s * input exactly iff K + output_padding - pad_begin - pad_end == s on both axes
        if any(k + op - pb - pe != s for k, op, pb, pe in zip((kh, kw), opad, pads[:2], pads[2:])):
            continue
        # phase a of the output reads input offset d with kernel tap k = a + pad_begin - s*d
        lo, hi = [], []
        for k, pb in zip((kh, kw), pads[:2]):
            lo.append(min(math.ceil((ph + pb - k + 1) / s) for ph in range(s)))
            hi.append(max((ph + pb) // s for ph in range(s)))
        if min(lo) > 0 or min(hi) < 0:  # would need a negative conv padding
            continue
        cin, cout = int(w.shape[0]), int(w.shape[1])
        dh, dw = hi[0] - lo[0] + 1, hi[1] - lo[1] + 1
        w2 = np.zeros((s * s * cout, cin, dh, dw), dtype=w.dtype)
        for pa in range(s):
            for pb_ in range(s):
                rows = slice((pa * s + pb_) * cout, (pa * s + pb_ + 1) * cout)
                for ty in range(dh):
                    ky = pa + pads[0] - s * (ty + lo[0])
                    if not 0 <= ky < kh:
                        continue
                    for tx in range(dw):
                        kx = pb_ + pads[1] - s * (tx + lo[1])
                        if 0 <= kx < kw:
                            w2[rows, :, ty, tx] = w[:, :, ky, kx].T
        inputs = [node.input[0], g.add_init(f"{node.input[1]}_phases", w2)]
        if bias is not None:
            inputs.append(g.add_init(f"{node.input[2]}_phases", np.tile(bias, s * s)))
        mid = g.fresh(f"{node.output[0]}_phases")
        conv = helper.make_node("Conv", inputs, [mid], name=g.fresh(f"{node.name}_as_conv"),
                                kernel_shape=[dh, dw], strides=[1, 1], group=1,
                                pads=[-lo[0], -lo[1], hi[0], hi[1]])
        d2s = helper.make_node("DepthToSpace", [mid], [node.output[0]], name=g.fresh(f"{node.name}_d2s"),
                               blocksize=s, mode="DCR")
        g.replace(node, [conv, d2s])
        count += 1
    return count


def narrow_conv_space_to_depth(g: _Graph) -> int:
    """A stride-1 conv with <= 4 output channels -> ``SpaceToDepth(2)``, conv, ``DepthToSpace(2)``.

    Why: onnxruntime pads conv outputs to a 16-channel NCHWc block, so the 7x7 head conv (ngf -> 3 at
    256x256) computes 16 channels to keep 3. On the space-to-depth image (half the size, 4x the channels)
    the same conv is a (K//2+1)-square conv with 4*Cout outputs: 12 of 16 lanes used instead of 3, ~3x
    fewer multiply-adds executed. A following Tanh/Relu/Sigmoid moves before the DepthToSpace so that
    onnxruntime still fuses it into the conv. Its effect on whole models is in
    ``benchmarks/results/optimize-cpu.md`` (the only rewrite in ``DEFAULT_REWRITES``).
    Applied only when the conv input's height and width are statically known, even, and the kernel is odd.
    """
    from onnx import helper

    count = 0
    for node, w, bias in _constant_weight_nodes(g, "Conv"):
        cout, cin, kh, kw = (int(v) for v in w.shape)
        a = _attrs(node)
        if (not _is_plain_2d(a, (kh, kw)) or int(a.get("group", 1)) != 1 or list(a.get("strides", [1, 1])) != [1, 1]
                or any(int(p) != 0 for p in a.get("pads", [0, 0, 0, 0]))):
            continue
        if cout > MAX_NARROW_OUT or kh % 2 == 0 or kw % 2 == 0 or kh < 3 or kw < 3:
            continue  # only narrow, odd-sized kernels gain (and tile exactly)
        shape = g.shapes.get(node.input[0])
        if not shape or len(shape) != 4 or shape[2] is None or shape[3] is None or shape[2] % 2 or shape[3] % 2:
            continue
        if (shape[2] - kh + 1) % 2 or (shape[3] - kw + 1) % 2:
            continue  # odd output: the phases would not tile it
        # out[2i+a, 2j+b] = sum_k x[2i+a+ky, 2j+b+kx] w[ky, kx]; x row 2(i+dy)+e -> tap dy, sub-row e
        dh, dw = kh // 2 + 1, kw // 2 + 1
        w2 = np.zeros((4 * cout, 4 * cin, dh, dw), dtype=w.dtype)
        for pa in range(2):
            for pb in range(2):
                orow = slice((pa * 2 + pb) * cout, (pa * 2 + pb + 1) * cout)
                for ky in range(kh):
                    dy, e = divmod(pa + ky, 2)
                    for kx in range(kw):
                        dx, f = divmod(pb + kx, 2)
                        w2[orow, (e * 2 + f) * cin:(e * 2 + f + 1) * cin, dy, dx] = w[:, :, ky, kx]
        s2d_out = g.fresh(f"{node.input[0]}_s2d")
        inputs = [s2d_out, g.add_init(f"{node.input[1]}_s2d", w2)]
        if bias is not None:
            inputs.append(g.add_init(f"{node.input[2]}_s2d", np.tile(bias, 4)))
        # fold an elementwise activation that is the conv's only consumer to the phase side of the DepthToSpace
        users = g.consumers(node.output[0])
        act = users[0] if (len(users) == 1 and users[0].op_type in ("Tanh", "Relu", "Sigmoid")
                           and node.output[0] not in {o.name for o in g.graph.output}) else None
        mid = g.fresh(f"{node.output[0]}_phases")
        new = [helper.make_node("SpaceToDepth", [node.input[0]], [s2d_out], name=g.fresh(f"{node.name}_s2d"),
                                blocksize=2),
               helper.make_node("Conv", inputs, [mid], name=g.fresh(f"{node.name}_on_s2d"),
                                kernel_shape=[dh, dw], strides=[1, 1], group=1, pads=[0, 0, 0, 0])]
        if act is not None:
            mid2 = g.fresh(f"{act.output[0]}_phases")
            new.append(helper.make_node(act.op_type, [mid], [mid2], name=g.fresh(f"{act.name}_phases")))
            new.append(helper.make_node("DepthToSpace", [mid2], [act.output[0]], name=g.fresh(f"{node.name}_d2s"),
                                        blocksize=2, mode="DCR"))
            g.graph.node.remove(act)
        else:
            new.append(helper.make_node("DepthToSpace", [mid], [node.output[0]], name=g.fresh(f"{node.name}_d2s"),
                                        blocksize=2, mode="DCR"))
        g.replace(node, new)
        count += 1
    return count


Rewrite = Callable[[_Graph], int]
REWRITES: dict[str, Rewrite] = {
    "narrow_conv_space_to_depth": narrow_conv_space_to_depth,
    "convtranspose_to_conv_d2s": convtranspose_to_conv_d2s,
}
DEFAULT_REWRITES: tuple[str, ...] = ("narrow_conv_space_to_depth",)  # the ones measured faster on this CPU


def _used_names(graph) -> set[str]:
    """Every tensor name a node (or a node of a nested subgraph) reads, plus the graph's inputs and outputs."""
    used = {o.name for o in graph.output} | {i.name for i in graph.input}
    for n in graph.node:
        used.update(n.input)
        for a in n.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                used |= _used_names(sub)
    return used


def _drop_unused_initializers(graph) -> None:
    used = _used_names(graph)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def optimize_model(model, rewrites: Sequence[str] | None = None):
    """Apply the named rewrites (default ``DEFAULT_REWRITES``, in that order) to a copy of ``model``.

    Returns ``(new_model, {rewrite name: sites rewritten})``. A graph below opset 13 is returned unchanged.
    """
    import onnx

    names = list(DEFAULT_REWRITES if rewrites is None else rewrites)
    unknown = [n for n in names if n not in REWRITES]
    if unknown:
        raise CrdError(f"unknown graph rewrite(s) {unknown}; known: {', '.join(REWRITES)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    counts = {name: 0 for name in names}
    if _opset(out) < MIN_OPSET:
        return out, counts
    for name in names:
        counts[name] = REWRITES[name](_Graph(out))
    if any(counts.values()):
        _drop_unused_initializers(out.graph)
        del out.graph.value_info[:]  # stale shapes of replaced tensors; onnxruntime re-infers them
        out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    return out, counts


def optimize_for_cpu(onnx_in: str | Path, onnx_out: str | Path, rewrites: Sequence[str] | None = None) -> Path:
    """Read ``onnx_in``, apply the exact CPU rewrites, check the graph, write ``onnx_out`` atomically.

    ``onnx_out`` may equal ``onnx_in``. Raises ``CrdError`` when the input is unreadable or the result
    fails ``onnx.checker``.
    """
    import onnx

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    try:
        model = onnx.load(str(onnx_in))
    except Exception as e:  # protobuf DecodeError, OSError
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CrdError(f"cannot read ONNX file {onnx_in}: {why}") from e
    new, _ = optimize_model(model, rewrites)
    with atomic_path(onnx_out) as tmp:
        onnx.save(new, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise CrdError(f"optimised ONNX graph failed onnx.checker: {str(e).splitlines()[0]}") from e
    return onnx_out
