"""Edge runtimes: exact XNNPACK rewrites, OpenVINO / ExecuTorch / ncnn artifacts, bench backends, compute floor.

Each runtime's tests skip when its package is absent (``pip install -e '.[edge]'``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from crdtool.bench.floor import FmaProbe, probe_fma_rate
from crdtool.bench.latency import LatencyResult, measure_latency
from crdtool.bench.report import floor_fraction, floor_ms, latency_rows
from crdtool.bench.runners import Backend, artifact_kind, check_compatible, parse_backend
from crdtool.deploy.executorch import DelegableInstanceNorm2d, SliceReflectionPad2d, xnnpack_friendly
from crdtool.errors import CrdError
from crdtool.models.checkpoints import save_generator
from crdtool.models.registry import build_generator

SIZE = 32


def _tiny(name: str = "mobile_resnet", **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_generator(name, 4, n_blocks=2, **kw).eval()


def _images(n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1


# ------------------------------------------------------------------------------ exact rewrites (torch only)


@pytest.mark.parametrize("affine", [False, True])
def test_delegable_instance_norm_matches_instance_norm(affine):
    norm = nn.InstanceNorm2d(6, affine=affine, track_running_stats=False)
    if affine:
        nn.init.normal_(norm.weight, 1.0, 0.3)
        nn.init.normal_(norm.bias, 0.0, 0.3)
    x = torch.randn(2, 6, 9, 7) * 3 + 1
    torch.testing.assert_close(DelegableInstanceNorm2d(norm)(x), norm(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pad", [1, 3, (2, 1, 0, 3)])
def test_slice_reflection_pad_copies_the_same_pixels(pad):
    ref = nn.ReflectionPad2d(pad)
    x = torch.randn(1, 2, 8, 9)
    assert torch.equal(SliceReflectionPad2d(ref)(x), ref(x))


def test_xnnpack_friendly_swaps_every_norm_and_pad_and_keeps_the_output():
    model = _tiny()
    net, counts = xnnpack_friendly(model)
    assert counts["instance_norm"] == sum(isinstance(m, nn.InstanceNorm2d) for m in model.modules()) > 0
    assert counts["reflection_pad"] == sum(isinstance(m, nn.ReflectionPad2d) for m in model.modules()) > 0
    assert not any(isinstance(m, (nn.InstanceNorm2d, nn.ReflectionPad2d)) for m in net.modules())
    x = _images()
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max() < 1e-5
    assert any(isinstance(m, nn.InstanceNorm2d) for m in model.modules())  # the caller's module is untouched


# ------------------------------------------------------------------------------ backends and the floor


def test_edge_backends_and_artifact_kinds():
    for name in ("openvino", "executorch", "ncnn"):
        be = parse_backend(name)
        assert be == Backend(name) and be.device_type == "cpu" and be.framework == name
    assert artifact_kind("m.xml") == "openvino" and artifact_kind("m.pte") == "executorch"
    assert artifact_kind("m.ncnn.param") == "ncnn"
    check_compatible("onnx", Backend("openvino"), "m.onnx")  # OpenVINO reads ONNX directly
    with pytest.raises(CrdError, match="cannot run"):
        check_compatible("ncnn", Backend("ort-cpu"), "m.ncnn.param")
    with pytest.raises(CrdError, match="precision suffix"):
        parse_backend("openvino:fp16")


def test_fma_probe_and_floor_columns():
    probe = probe_fma_rate(1, seconds=0.05, n=128)
    assert probe.gmacs_per_s >= probe.median_gmacs_per_s > 0 and probe.repeats >= 3
    assert FmaProbe(50.0, 40.0, 2, "", 3, None).floor_ms(10**9) == pytest.approx(20.0)
    r = LatencyResult("a", "student", "torch", "ort-cpu", "fp32", 1, 256, median_ms=40.0, macs=10**9,
                      macs_exact=2 * 10**9, fma_gmacs_per_s=100.0, runs=5, runs_requested=5, min_ms=39.0,
                      p90_ms=41.0, p99_ms=42.0, throughput_ips=25.0)
    assert floor_ms(r) == pytest.approx(20.0) and floor_fraction(r) == pytest.approx(0.5)
    row = latency_rows([r])[0]
    assert "20.00" in row and "50%" in row
    r.fma_gmacs_per_s = None
    assert floor_ms(r) is None and latency_rows([r])[0][11] == "-"


# ------------------------------------------------------------------------------ OpenVINO


def _onnx(tmp_path, model):
    from crdtool.deploy.onnx import export_onnx

    return export_onnx(model, tmp_path / "m.onnx", (1, 3, SIZE, SIZE))


def test_openvino_ir_matches_pytorch_in_fp32_and_benches(tmp_path):
    pytest.importorskip("openvino")
    from crdtool.deploy import openvino as ov

    model = _tiny()
    xml = ov.convert_onnx(_onnx(tmp_path, model), tmp_path / "m.xml")
    assert ov.weights_path(xml).is_file() and not list(tmp_path.glob(".*tmp*"))
    info = ov.describe(xml)
    assert info.precision == "fp32" and info.ops.get("MVN", 0) + info.ops.get("NormalizeL2", 0) >= 0
    x = _images()
    with torch.no_grad():
        ref = model(x).numpy()
    assert abs(ov.run_ir(xml, x, threads=1) - ref).max() < 1e-4
    r = measure_latency(str(xml), "openvino", size=SIZE, runs=3, warmup="1", threads=1)
    assert r.ok and r.backend == "openvino" and r.precision == "fp32", r.error


def test_openvino_int8_is_quantized_and_close(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from crdtool.deploy import openvino as ov

    model = _tiny()
    xml = ov.convert_onnx(_onnx(tmp_path, model), tmp_path / "m.xml")
    q = ov.quantize_int8(xml, tmp_path / "m.int8.xml", _images(4))
    assert ov.describe(q).precision == "int8"
    x = _images()
    with torch.no_grad():
        ref = model(x).numpy()
    err = abs(ov.run_ir(q, x, threads=1) - ref).max()
    assert 0 < err < 0.5


def test_openvino_int8_keeps_the_colour_skip_in_fp32(tmp_path):
    """Convolutions get int8 inputs; the colour skip's MatMuls (per-pixel colour matrix, MLP) do not."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino
    from crdtool.deploy import openvino as ov
    from crdtool.models import GeneratorSpec

    torch.manual_seed(0)
    model = build_generator(GeneratorSpec("mobile_resnet", ngf=4, n_blocks=2, residual=True, colour_skip=True)).eval()
    torch.nn.init.normal_(model.colour_skip.predict[-1].weight, 0.0, 0.1)  # a colour matrix that is not I
    xml = ov.convert_onnx(_onnx(tmp_path, model), tmp_path / "m.xml")
    q = openvino.Core().read_model(str(ov.quantize_int8(xml, tmp_path / "m.int8.xml", _images(4))))

    def fed_by_fake_quantize(op) -> bool:
        return any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())

    ops = q.get_ops()
    assert any(fed_by_fake_quantize(op) for op in ops if op.get_type_name() == "Convolution")
    matmuls = [op for op in ops if op.get_type_name() == "MatMul"]
    assert matmuls and not any(fed_by_fake_quantize(op) for op in matmuls)


# ------------------------------------------------------------------------------ ncnn


def test_ncnn_model_matches_pytorch_in_fp32(tmp_path):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    from crdtool.deploy import ncnn as ncnn_mod

    model = _tiny()
    param = ncnn_mod.export_ncnn(_onnx(tmp_path, model), tmp_path / "m.ncnn.param", (1, 3, SIZE, SIZE))
    assert ncnn_mod.bin_path(param).is_file() and sorted(p.name for p in tmp_path.iterdir()) == [
        "m.ncnn.bin", "m.ncnn.param", "m.onnx"]
    layers = ncnn_mod.layer_types(param)
    assert layers["InstanceNorm"] > 0 and layers["Padding"] > 0  # native layers, no rewrite needed
    x = _images()
    with torch.no_grad():
        ref = model(x).numpy()
    assert abs(ncnn_mod.run_ncnn(param, x, threads=1) - ref).max() < 1e-4
    r = measure_latency(str(param), "ncnn", size=SIZE, runs=3, warmup="1", threads=1)
    assert r.ok and r.backend == "ncnn", r.error


# ------------------------------------------------------------------------------ ExecuTorch


@pytest.mark.slow
def test_executorch_rewrite_delegates_everything_and_matches(tmp_path):
    pytest.importorskip("executorch")
    from crdtool.deploy import executorch as et

    model = _tiny()
    raw = et.export_pte(model, tmp_path / "raw.pte", (1, 3, SIZE, SIZE), rewrite=False)
    assert raw.undelegated  # InstanceNorm and the reflection padding stay in portable kernels
    info = et.export_pte(model, tmp_path / "m.pte", (1, 3, SIZE, SIZE))
    assert info.undelegated == {} and info.delegate_calls < raw.delegate_calls
    x = _images()
    with torch.no_grad():
        ref = model(x).numpy()
    assert abs(et.run_pte(info.path, x, threads=1) - ref).max() < 1e-4
    r = measure_latency(str(info.path), "executorch", size=SIZE, runs=3, warmup="1", threads=1)
    assert r.ok and r.precision == "fp32", r.error


# ------------------------------------------------------------------------------ crdtool export


def test_export_writes_verified_edge_artifacts_with_their_weights(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    from crdtool.deploy.export import export_artifacts

    ckpt = save_generator(_tiny(), tmp_path / "student.safetensors")
    res = export_artifacts(ckpt, tmp_path / "out", onnx=False, openvino=True, ncnn=True, size=SIZE,
                           images=_images(2))
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["manifest.json", "student.bin", "student.ncnn.bin", "student.ncnn.param", "student.xml"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    kinds = {a["kind"]: a for a in manifest["artifacts"]}
    assert set(kinds) == {"openvino-fp32", "ncnn-fp32"}
    for entry in kinds.values():
        assert entry["parity"]["max_abs"] < 1e-4 and entry["notes"]["companion_files"]
    assert not math.isnan(res.rows[0].parity.psnr_db)
    _standalone_runners_agree(tmp_path)


def _standalone_runners_agree(tmp_path):
    """export/run_openvino.py and export/run_ncnn.py translate a folder into the same pixels (both fp32)."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    runners = Path(__file__).resolve().parents[1] / "export"
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, x in enumerate(_images(2)):
        Image.fromarray(((x + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(photos / f"{i}.png")
    (photos / "broken.png").write_bytes(b"not a png")
    outs = {}
    for runner, model in (("run_openvino.py", "student.xml"), ("run_ncnn.py", "student.ncnn.param")):
        out = tmp_path / runner
        proc = subprocess.run([sys.executable, str(runners / runner), str(tmp_path / "out" / model), str(photos),
                               str(out), "--threads", "1"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "2 images" in proc.stdout and "median" in proc.stdout and "broken.png: skipped" in proc.stderr
        outs[runner] = [np.asarray(Image.open(out / f"{i}.png"), dtype=np.int16) for i in range(2)]
    for a, b in zip(outs["run_openvino.py"], outs["run_ncnn.py"]):
        assert a.shape == (SIZE, SIZE, 3) and np.abs(a - b).max() <= 1


def test_export_refuses_a_fixed_shape_runtime_with_dynamic_and_writes_nothing(tmp_path):
    from crdtool.deploy.export import export_artifacts

    ckpt = save_generator(_tiny(), tmp_path / "student.safetensors")
    with pytest.raises(CrdError, match="--dynamic"):
        export_artifacts(ckpt, tmp_path / "out", ncnn=True, dynamic=True, size=SIZE, images=_images(1))
    assert not (tmp_path / "out").exists()
