"""crdtool.deploy.optimize: every rewrite keeps the fp32 output (vs PyTorch and vs the original graph).

Single-node graphs check the weight algebra against torch's own conv ops over many configurations; small
exported generators of every family (resnet, mobile_resnet, unet, searched; 32-48 px, random O(1) weights with non-zero biases) check the pass on
the graphs the exporter really writes.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from crdtool.deploy import onnx as donnx
from crdtool.deploy.optimize import DEFAULT_REWRITES, REWRITES, optimize_for_cpu, optimize_model
from crdtool.errors import CrdError
from crdtool.models import build_generator
from crdtool.models.registry import GeneratorSpec

TOL = 1e-5  # measured ~1e-6: the rewrites only reorder float sums and add exact zeros


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _single(op: str, x_shape, w: np.ndarray, b: np.ndarray | None, after: str | None = None, *, dims=None,
            opset: int = 20, **attrs) -> onnx.ModelProto:
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    nodes = [helper.make_node(op, inputs, ["y" if after is None else "c"], **attrs)]
    if after is not None:
        nodes.append(helper.make_node(after, ["c"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims or x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# ------------------------------------------------------------------------------------------ ConvTranspose

@pytest.mark.parametrize("k,s,p,op", [(3, 2, 1, 1), (4, 2, 1, 0), (2, 2, 0, 0), (5, 2, 2, 1), (3, 3, 0, 0),
                                      (6, 3, 2, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_convtranspose_phases_match_torch(k, s, p, op, bias):
    g = torch.Generator().manual_seed(k * 10 + s)
    x = torch.randn(1, 5, 7, 6, generator=g)
    w = torch.randn(5, 4, k, k, generator=g)
    b = torch.randn(4, generator=g) if bias else None
    ref = torch.nn.functional.conv_transpose2d(x, w, b, stride=s, padding=p, output_padding=op).numpy()
    assert ref.shape[2:] == (7 * s, 6 * s)  # the configurations the rewrite claims
    model = _single("ConvTranspose", [1, 5, 7, 6], w.numpy(), None if b is None else b.numpy(), strides=[s, s],
                    pads=[p, p, p, p], output_padding=[op, op], kernel_shape=[k, k])
    new, counts = optimize_model(model, ["convtranspose_to_conv_d2s"])
    assert counts == {"convtranspose_to_conv_d2s": 1}
    assert _ops(new) == {"Conv": 1, "DepthToSpace": 1}
    onnx.checker.check_model(new, full_check=True)
    out = _run(new, x.numpy())
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOL * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("why,attrs,sites", [
    ("output 2H-1", dict(strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]), 0),
    ("grouped", dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], kernel_shape=[3, 3], group=2), 0),
    ("dilated", dict(strides=[2, 2], pads=[2, 2, 2, 2], output_padding=[1, 1], kernel_shape=[3, 3],
                     dilations=[2, 2]), 0),
    ("stride 1", dict(strides=[1, 1], pads=[1, 1, 1, 1], kernel_shape=[3, 3]), 0),
    ("asymmetric pads", dict(strides=[2, 2], pads=[1, 1, 0, 0], output_padding=[1, 1], kernel_shape=[2, 2]), 1),
])
def test_convtranspose_rewrites_only_what_it_derives(why, attrs, sites):
    g = torch.Generator().manual_seed(1)
    groups = attrs.get("group", 1)
    k = attrs["kernel_shape"][0]
    w = torch.randn(4, 4 // groups, k, k, generator=g).numpy()
    x = torch.randn(1, 4, 6, 6, generator=g).numpy()
    model = _single("ConvTranspose", [1, 4, 6, 6], w, None, **attrs)
    new, counts = optimize_model(model, ["convtranspose_to_conv_d2s"])
    assert counts["convtranspose_to_conv_d2s"] == sites, why
    if not sites:
        assert _ops(new) == {"ConvTranspose": 1}
    ref = _run(model, x)
    assert np.abs(_run(new, x) - ref).max() <= TOL * max(1.0, np.abs(ref).max())


# ------------------------------------------------------------------------------------------ narrow conv

@pytest.mark.parametrize("k,cin,cout,size,after", [(7, 16, 3, 22, "Tanh"), (7, 8, 3, 38, None), (3, 5, 4, 10, "Relu"),
                                                   (5, 3, 1, 16, "Sigmoid"), (3, 16, 2, 8, None)])
@pytest.mark.parametrize("bias", [False, True])
def test_narrow_conv_space_to_depth_matches_torch(k, cin, cout, size, after, bias):
    g = torch.Generator().manual_seed(k + cin + cout)
    x = torch.randn(1, cin, size, size, generator=g)
    w = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
    b = torch.randn(cout, generator=g) if bias else None
    ref = torch.nn.functional.conv2d(x, w, b)
    ref = (getattr(torch, after.lower()) if after else (lambda t: t))(ref).numpy()
    model = _single("Conv", list(x.shape), w.numpy(), None if b is None else b.numpy(), after)
    new, counts = optimize_model(model, ["narrow_conv_space_to_depth"])
    assert counts == {"narrow_conv_space_to_depth": 1}
    ops = _ops(new)
    assert ops["SpaceToDepth"] == 1 and ops["DepthToSpace"] == 1 and ops["Conv"] == 1
    if after:  # the activation sits before the DepthToSpace, where onnxruntime can fuse it into the conv
        d2s = next(n for n in new.graph.node if n.op_type == "DepthToSpace")
        producer = next(n for n in new.graph.node if d2s.input[0] in n.output)
        assert producer.op_type == after
    onnx.checker.check_model(new, full_check=True)
    out = _run(new, x.numpy())
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOL


@pytest.mark.parametrize("why,cout,k,size,attrs,dims", [
    ("wide output", 16, 7, 22, {}, None),
    ("five outputs", 5, 7, 22, {}, None),
    ("even kernel", 3, 4, 21, {}, None),
    ("odd size", 3, 7, 21, {}, None),
    ("stride 2", 3, 3, 22, {"strides": [2, 2]}, None),
    ("zero padding attr", 3, 3, 22, {"pads": [1, 1, 1, 1]}, None),
    ("dynamic size", 3, 7, 22, {}, [1, 6, "h", "w"]),
])
def test_narrow_conv_skips_what_it_cannot_tile(why, cout, k, size, attrs, dims):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(cout, 6, k, k, generator=g).numpy()
    x = torch.randn(1, 6, size, size, generator=g).numpy()
    model = _single("Conv", [1, 6, size, size], w, None, dims=dims, **attrs)
    new, counts = optimize_model(model, ["narrow_conv_space_to_depth"])
    assert counts["narrow_conv_space_to_depth"] == 0, why
    assert _ops(new) == {"Conv": 1}
    assert np.array_equal(_run(new, x), _run(model, x))


def test_activation_with_two_consumers_stays_after_the_depth_to_space():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(3, 8, 7, 7, generator=g).numpy() / 20
    x = torch.randn(1, 8, 14, 14, generator=g).numpy()
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Tanh", ["c"], ["y"]),
             helper.make_node("Relu", ["c"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    new, counts = optimize_model(model)
    assert counts["narrow_conv_space_to_depth"] == 1
    assert _ops(new)["Tanh"] == 1 and _ops(new)["Relu"] == 1
    import onnxruntime as ort

    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for r, o in zip(ref, got):
        assert np.abs(r - o).max() <= TOL


def test_old_opset_is_left_alone():
    w = np.ones((3, 4, 7, 7), np.float32)
    model = _single("Conv", [1, 4, 22, 22], w, None, opset=11)
    new, counts = optimize_model(model)
    assert counts == {name: 0 for name in DEFAULT_REWRITES} and _ops(new) == {"Conv": 1}


# ------------------------------------------------------------------------------------------ generators

def _kaiming(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """O(1) activations and non-zero biases, so parity is measured where it can fail."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.weight.data = torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5
            if m.bias is not None:
                m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)
    return model.eval()


SEARCHED_ARCH = {"format": "crdtool.arch", "version": 1, "input_nc": 3, "output_nc": 3, "norm": "instance",
                 "expand": 2, "stem": [8, 16, 16], "head": [16, 8],
                 "cells": [{"op": "invres", "width": 16}, {"op": "resblock", "width": 16}]}
FAMILIES = {  # name: (spec, size, expected sites per rewrite)
    "mobile_resnet": (GeneratorSpec("mobile_resnet", ngf=8, n_blocks=2), 48,
                      {"narrow_conv_space_to_depth": 1, "convtranspose_to_conv_d2s": 2}),
    "resnet": (GeneratorSpec("resnet", ngf=8, n_blocks=1), 32,
               {"narrow_conv_space_to_depth": 1, "convtranspose_to_conv_d2s": 2}),
    "unet": (GeneratorSpec("unet", ngf=8, num_downs=5), 32,
             {"narrow_conv_space_to_depth": 0, "convtranspose_to_conv_d2s": 5}),
    "searched": (GeneratorSpec("searched", arch=SEARCHED_ARCH), 32,
                 {"narrow_conv_space_to_depth": 1, "convtranspose_to_conv_d2s": 2}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request, tmp_path_factory):
    name = request.param
    spec, size, expected = FAMILIES[name]
    model = _kaiming(build_generator(spec), seed=len(name))
    path = donnx.export_onnx(model, tmp_path_factory.mktemp(name) / f"{name}.onnx", (1, 3, size, size))
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(7)) * 2 - 1
    return name, model, path, x, expected


def test_each_rewrite_keeps_every_generator_exact(exported, tmp_path):
    name, model, path, x, expected = exported
    ref = donnx.reference_outputs(model, x)
    base = donnx.run_onnx(path, x)
    for rewrite in REWRITES:
        out = optimize_for_cpu(path, tmp_path / f"{rewrite}.onnx", [rewrite])
        _, counts = optimize_model(onnx.load(str(path)), [rewrite])
        assert counts[rewrite] == expected[rewrite], (name, rewrite)
        got = donnx.run_onnx(out, x)
        vs_torch, vs_onnx = np.abs(got - ref).max(), np.abs(got - base).max()
        assert vs_torch <= TOL and vs_onnx <= TOL, (name, rewrite, vs_torch, vs_onnx)
        donnx.check_fp32_parity(donnx.measure_parity(ref, got), f"{name} after {rewrite}")


def test_default_pass_on_a_generator_is_idempotent(exported, tmp_path):
    name, model, path, x, expected = exported
    once = optimize_for_cpu(path, tmp_path / "once.onnx")
    twice, counts = optimize_model(onnx.load(str(once)))
    assert all(v == 0 for v in counts.values())
    ops = _ops(onnx.load(str(once)))
    assert ops["SpaceToDepth"] == expected["narrow_conv_space_to_depth"]
    assert ops["ConvTranspose"] == _ops(onnx.load(str(path)))["ConvTranspose"]  # not rewritten by default
    assert np.abs(donnx.run_onnx(once, x) - donnx.reference_outputs(model, x)).max() <= TOL


def test_optimize_in_place_and_errors(tmp_path):
    w = np.random.default_rng(0).standard_normal((3, 4, 7, 7)).astype(np.float32)
    path = tmp_path / "m.onnx"
    onnx.save(_single("Conv", [1, 4, 22, 22], w, None, "Tanh"), str(path))
    x = np.random.default_rng(1).standard_normal((1, 4, 22, 22)).astype(np.float32)
    before = _run(onnx.load(str(path)), x)
    assert optimize_for_cpu(path, path) == path
    after = onnx.load(str(path))
    assert _ops(after)["SpaceToDepth"] == 1
    assert np.abs(_run(after, x) - before).max() <= TOL
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind
    with pytest.raises(CrdError, match="unknown graph rewrite"):
        optimize_for_cpu(path, tmp_path / "x.onnx", ["fold_everything"])
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(CrdError, match="cannot read ONNX file"):
        optimize_for_cpu(tmp_path / "bad.onnx", tmp_path / "y.onnx")
    assert not (tmp_path / "y.onnx").exists()
