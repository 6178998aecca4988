"""crdtool export: ONNX parity, INT8 QDQ / FP16 graphs, manifest, standalone runner, TensorRT plumbing.

Everything runs on CPU at 32 px. TensorRT is replaced by a stub module that records the API calls and
"executes" the parsed ONNX file with onnxruntime, so the build and run code is exercised end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from crdtool.data.images import load_folder_tensor, to_uint8
from crdtool.deploy import onnx as donnx
from crdtool.deploy import quantize, tensorrt
from crdtool.data.synth import smooth_noise_images
from crdtool.deploy.export import export_artifacts, input_images
from crdtool.deploy.manifest import read_manifest, sha256_file
from crdtool.errors import CrdError
from crdtool.models import build_discriminator, build_generator
from crdtool.models.checkpoints import save_generator
from tests.helpers import fake_tensorrt

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
INT8_PSNR_FLOOR_DB = 30.0  # briefly trained 32 px mobile student, 16 calibration images (measured 45-50 dB)
FP16_PSNR_FLOOR_DB = 60.0


def _kaiming(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights with O(1) activations, so parity is measured on outputs that are not all ~0."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) / fan_in**0.5
            if m.bias is not None:
                m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)
    return model.eval()


def _write_images(folder: Path, tensors: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(to_uint8(tensors)):
        Image.fromarray(img).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny unaligned dataset: real photos when ../shared/data is present, else smooth synthetic images."""
    root = tmp_path_factory.mktemp("data")
    real = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photo2anime"
    if real.is_dir():
        train = load_folder_tensor(real / "trainA", 48, 24)
        test = load_folder_tensor(real / "testA", 48, 6)
    else:
        train, test = smooth_noise_images(24, 48, seed=3), smooth_noise_images(6, 48, seed=4)
    _write_images(root / "trainA", train)
    _write_images(root / "testA", test)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dataset) -> Path:
    """A run folder like the distill loop writes: a briefly trained mobile student + its recipe."""
    torch.manual_seed(0)
    x = load_folder_tensor(dataset / "trainA", SIZE)
    model = build_generator("mobile_resnet", 16, n_blocks=3)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is fastest, and immune to a busy machine
    try:
        for step in range(80):  # learn a fixed colour mapping (RGB -> BGR, darker): real, non-trivial outputs
            batch = x[torch.randint(0, len(x), (4,))]
            loss = (model(batch) - (0.8 * batch.flip(1) - 0.1)).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    run = tmp_path_factory.mktemp("run")
    save_generator(model.eval(), run / "student.safetensors")
    (run / "recipe.toml").write_text(f'name = "t"\n[data]\nroot = "{dataset}"\nload_size = {SIZE}\n'
                                     f'crop_size = {SIZE}\n')
    return run


@pytest.fixture(scope="module")
def exported(run_dir):
    return export_artifacts(run_dir, int8_cpu=True, fp16=True, calib_images=16, verify_images=4)


# ----------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name,kw", [("resnet", {"ngf": 4, "n_blocks": 1}), ("mobile_resnet", {"ngf": 8, "n_blocks": 1}),
                                     ("unet", {"ngf": 4, "num_downs": 5})])
def test_every_family_exports_with_fp32_parity(tmp_path, name, kw):
    model = _kaiming(build_generator(name, **kw))
    path = donnx.export_onnx(model, tmp_path / f"{name}.onnx", (1, 3, SIZE, SIZE))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]  # one file, no external data
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, SIZE, SIZE]
    x = smooth_noise_images(3, SIZE, seed=7)
    ref = donnx.reference_outputs(model, x)
    assert ref.std() > 0.05, "test model should produce non-trivial outputs"
    parity = donnx.verify_onnx(model, path, x, reference=ref)
    assert parity.n_images == 3 and parity.max_abs < donnx.FP32_MAX_ABS and parity.psnr_db > 80


def test_dynamic_export_runs_other_batch_and_sizes(tmp_path):
    model = _kaiming(build_generator("resnet", 4, n_blocks=1))
    path = donnx.export_onnx(model, tmp_path / "d.onnx", (1, 3, SIZE, SIZE), dynamic=True)
    sess = donnx.ort_session(path)
    assert [d if isinstance(d, int) else "sym" for d in sess.get_inputs()[0].shape] == ["sym", 3, "sym", "sym"]
    x = smooth_noise_images(2, 48, seed=1)[:, :, :, :40]
    out = sess.run(None, {"input": x.numpy()})[0]
    assert out.shape == (2, 3, 48, 40)
    assert donnx.measure_parity(donnx.reference_outputs(model, x), out).max_abs < donnx.FP32_MAX_ABS


def test_parity_numbers():
    ref = np.zeros((1, 3, 4, 4), np.float32)
    p = donnx.measure_parity(ref, ref + 0.02)
    assert p.max_abs == pytest.approx(0.02) and p.mean_abs == pytest.approx(0.02)
    assert p.psnr_db == pytest.approx(10 * np.log10(4 / 0.02**2), rel=1e-5)
    assert donnx.measure_parity(ref, ref).to_dict()["psnr_db"] is None  # identical: inf, stored as null
    with pytest.raises(CrdError, match="max abs error"):
        donnx.check_fp32_parity(p, "x")


def test_the_two_psnrs_agree_on_one_image_and_differ_as_documented():
    from crdtool.metrics.fidelity import pooled_psnr, psnr

    ref = torch.zeros(2, 3, 4, 4)
    one = ref.clone()
    one[0] += 0.02
    assert pooled_psnr(ref[:1], one[:1]) == pytest.approx(psnr(ref[:1], one[:1]), rel=1e-5)  # same peak
    assert psnr(ref, one) == float("inf")  # per-image mean: the identical image makes it inf
    assert pooled_psnr(ref, one) == pytest.approx(10 * np.log10(4 / (0.02**2 / 2)), rel=1e-5)
    over = ref + 1.5  # a backend overshooting [-1, 1]: clamped PSNR hides part of it, pooled does not
    assert pooled_psnr(ref, over) < psnr(ref, over)


# ----------------------------------------------------------------------------------------- export


def test_export_writes_verified_artifacts(exported, run_dir):
    out = run_dir / "export"
    assert exported.out_dir == out
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "student.fp16.onnx", "student.int8.onnx",
                                                     "student.onnx"]  # no staging or temp files left
    rows = {r.kind: r for r in exported.rows}
    assert set(rows) == {"onnx-fp32", "onnx-int8-qdq", "onnx-fp16"}
    assert all(r.status == "ok" for r in rows.values()), [r.status for r in rows.values()]
    assert rows["onnx-fp32"].parity.max_abs <= 1e-4
    assert rows["onnx-int8-qdq"].parity.psnr_db >= INT8_PSNR_FLOOR_DB
    assert rows["onnx-fp16"].parity.psnr_db >= FP16_PSNR_FLOOR_DB
    assert rows["onnx-int8-qdq"].parity.max_abs > rows["onnx-fp32"].parity.max_abs  # int8 really is int8
    assert not exported.synthetic and exported.verification.endswith("testA")
    assert exported.calibration.endswith("trainA")
    for r in rows.values():
        assert r.bytes == (out / r.artifact).stat().st_size > 0


def test_manifest_contents(exported, run_dir):
    m = read_manifest(exported.manifest)
    assert m["format"] == "crdtool.export" and m["version"] == 1
    assert m["input"]["name"] == "input" and m["input"]["shape"] == [1, 3, SIZE, SIZE]
    assert m["input"]["dtype"] == "float32" and m["input"]["range"] == [-1.0, 1.0]
    assert m["input"]["layout"] == "NCHW" and m["input"]["color"] == "RGB" and m["input"]["size"] == [SIZE, SIZE]
    assert m["output"]["range"] == [-1.0, 1.0]
    assert m["source"]["sha256"] == sha256_file(run_dir / "student.safetensors")
    assert m["source"]["generator"]["name"] == "mobile_resnet" and m["source"]["kind"] == "run"
    assert {"crdtool", "torch", "onnx", "onnxruntime"} <= set(m["versions"])
    assert m["verification"]["synthetic"] is False and m["verification"]["n_images"] == 4
    assert m["calibration"]["n_images"] == 16
    by_kind = {a["kind"]: a for a in m["artifacts"]}
    for row in exported.rows:
        entry = by_kind[row.kind]
        assert entry["parity"]["max_abs"] == pytest.approx(row.parity.max_abs)
        assert entry["sha256"] == sha256_file(exported.out_dir / entry["file"])


def test_int8_graph_is_symmetric_qdq_with_pads_fused(exported):
    graph = onnx.load(str(exported.artifacts["onnx-int8-qdq"])).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:  # zero point 0, int8: a valid TensorRT explicit-quantization input
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert all(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs)  # int8 weights
    pads = [n for n in graph.node if n.op_type == "Pad"]
    assert pads and all(producer[p.input[0]].op_type == "DequantizeLinear" for p in pads)  # Q/DQ above the Pad
    for c in convs:  # a conv reads either a Pad (fusable) or a DQ directly, never Pad -> Q -> DQ
        assert producer[c.input[0]].op_type in ("Pad", "DequantizeLinear")


def test_hoisting_qdq_above_pad_keeps_outputs(exported, tmp_path):
    fp32 = tmp_path / "m.onnx"
    model = _kaiming(build_generator("mobile_resnet", 8, n_blocks=1))
    donnx.export_onnx(model, fp32, (1, 3, SIZE, SIZE))
    calib = smooth_noise_images(4, SIZE, seed=2)
    a = quantize.quantize_int8_qdq(fp32, tmp_path / "a.onnx", calib, move_qdq_above_pad=False)
    b = quantize.quantize_int8_qdq(fp32, tmp_path / "b.onnx", calib, move_qdq_above_pad=True)
    x = smooth_noise_images(2, SIZE, seed=5)
    np.testing.assert_allclose(donnx.run_onnx(a, x), donnx.run_onnx(b, x), atol=1e-5)
    assert quantize.count_ops(a, ["QuantizeLinear"]) == quantize.count_ops(b, ["QuantizeLinear"])


def _tensor_types(graph) -> dict[str, int]:
    """Element type of every named tensor: graph I/O, intermediates, initializers."""
    out = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    return out | {t.name: t.data_type for t in graph.initializer}


def test_fp16_graph_keeps_io_and_instance_norm_fp32(exported):
    graph = onnx.load(str(exported.artifacts["onnx-fp16"])).graph
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert graph.input[0].type.tensor_type.elem_type == f32 and graph.output[0].type.tensor_type.elem_type == f32
    types_ = _tensor_types(graph)
    norms = [n for n in graph.node if n.op_type == "InstanceNormalization"]
    assert norms and all(types_[n.input[0]] == f32 and types_[n.input[1]] == f32 for n in norms)
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    inits = {t.name: t.data_type for t in graph.initializer}
    assert all(inits[n.input[1]] == f16 for n in convs)


def test_fp16_keeps_nodes_with_out_of_range_values_fp32(tmp_path):
    model = _kaiming(build_generator("resnet", 4, n_blocks=1, norm="none"))
    with torch.no_grad():
        model.model[1].weight.mul_(1e5)  # first conv output far beyond float16's range
    fp32 = donnx.export_onnx(model, tmp_path / "m.onnx", (1, 3, SIZE, SIZE))
    x = smooth_noise_images(2, SIZE, seed=3)
    half = quantize.convert_fp16(fp32, tmp_path / "h.onnx", sample_inputs=x)
    graph = onnx.load(str(half)).graph
    first = next(n for n in graph.node if n.op_type == "Conv")
    assert _tensor_types(graph)[first.input[1]] == onnx.TensorProto.FLOAT  # computes in float32
    out = donnx.run_onnx(half, x)
    assert np.all(np.isfinite(out))
    assert donnx.measure_parity(donnx.reference_outputs(model, x), out).psnr_db > 40


def test_synthetic_fallback_and_default_out_dir(tmp_path):
    model = _kaiming(build_generator("mobile_resnet", 4, n_blocks=1))
    ckpt = save_generator(model, tmp_path / "gen.safetensors")
    res = export_artifacts(ckpt, size=SIZE, verify_images=2)
    assert res.out_dir == tmp_path / "gen-export" and res.synthetic
    assert any("SYNTHETIC" in n for n in res.notes)
    m = read_manifest(res.manifest)
    assert m["verification"]["synthetic"] is True and "synthetic" in m["verification"]["images"]
    assert m["source"]["kind"] == "file"


def test_input_images_aligned_takes_the_input_half(tmp_path):
    (tmp_path / "val").mkdir()
    ab = np.zeros((8, 16, 3), np.uint8)
    ab[:, :8, 0] = 255  # A (left) red
    ab[:, 8:, 2] = 255  # B (right) blue
    Image.fromarray(ab).save(tmp_path / "val" / "0.png")
    for direction, channel in (("AtoB", 0), ("BtoA", 2)):
        recipe = types.SimpleNamespace(data=types.SimpleNamespace(root=tmp_path, layout="aligned",
                                                                  direction=direction, crop_size=8))
        x, folder = input_images(recipe, "test", 4, 8)
        assert folder == tmp_path / "val" and x.shape == (1, 3, 8, 8)
        assert x[0, channel].mean() > 0.9 and x[0].mean() < 0


# ----------------------------------------------------------------------------------------- failures


def test_corrupt_checkpoint_discriminator_and_bad_size_give_one_line(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    disc = tmp_path / "netD.safetensors"
    save_file({k: v.contiguous() for k, v in build_discriminator(ndf=8).state_dict().items()}, str(disc))
    disc_pth = tmp_path / "latest_net_D.pth"
    torch.save(build_discriminator(ndf=8).state_dict(), disc_pth)
    for path, pattern in ((bad, "not a readable safetensors"), (disc, "not a crdtool generator"),
                          (disc_pth, "unknown generator checkpoint layout: first key"),
                          (tmp_path / "missing.safetensors", "not found")):
        with pytest.raises(CrdError, match=pattern) as e:
            export_artifacts(path)
        assert "\n" not in str(e.value)
        assert not (tmp_path / f"{path.stem}-export").exists()
    gen = save_generator(build_generator("mobile_resnet", 4, n_blocks=1), tmp_path / "g.safetensors")
    with pytest.raises(CrdError, match="multiple of 4"):
        export_artifacts(gen, size=30)


def test_unwritable_output_and_failed_parity_leave_nothing(tmp_path, monkeypatch):
    gen = save_generator(_kaiming(build_generator("mobile_resnet", 4, n_blocks=1)), tmp_path / "g.safetensors")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CrdError, match="not writable"):
        export_artifacts(gen, blocker / "out", size=SIZE)

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    real_run = donnx.run_onnx
    monkeypatch.setattr(donnx, "run_onnx", lambda path, x, threads=None: real_run(path, x) + 1e-3)
    with pytest.raises(CrdError, match="does not match PyTorch"):
        export_artifacts(gen, out, size=SIZE, verify_images=2)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(CrdError):
        export_artifacts(gen, tmp_path / "fresh", size=SIZE, verify_images=2)
    assert not (tmp_path / "fresh").exists()


# ----------------------------------------------------------------------------------------- runner + CLI


def test_run_onnx_matches_pytorch_pixels_without_torch(exported, run_dir, dataset, tmp_path):
    import ast

    tree = ast.parse((REPO / "export" / "run_onnx.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "argparse", "json", "statistics", "sys", "time", "pathlib", "numpy", "PIL",
                        "onnxruntime"}, imported
    out = tmp_path / "png"
    probe = (f"import runpy, sys; sys.argv = ['run_onnx.py', {str(exported.artifacts['onnx-fp32'])!r}, "
             f"{str(dataset / 'testA')!r}, {str(out)!r}, '--threads', '1']; "
             f"runpy.run_path({str(REPO / 'export' / 'run_onnx.py')!r}, run_name='__main__')")
    wrapper = f"import sys\ntry:\n    {probe}\nexcept SystemExit as e:\n    code = e.code\n" \
              "bad = [m for m in sys.modules if m == 'torch' or m.startswith('crdtool')]\n" \
              "print('IMPORTED', bad)\nsys.exit(1 if bad else code)\n"
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "IMPORTED []" in proc.stdout and "median" in proc.stdout and " ms" in proc.stdout

    from crdtool.models.checkpoints import load_generator

    model = load_generator(run_dir)
    x = load_folder_tensor(dataset / "testA", SIZE)
    with torch.no_grad():
        expected = to_uint8(model(x))
    got = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))])
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # within uint8 rounding


def test_cli_prints_parity_table_and_one_line_errors(run_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from crdtool.commands.export import export

    app = typer.Typer()
    app.command()(export)
    runner = CliRunner()
    res = runner.invoke(app, [str(run_dir), "--no-onnx", "--int8-cpu", "-o", str(tmp_path / "o"),
                              "--calib-images", "4"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    for word in ("student.int8.onnx", "onnxruntime", "PSNR", "max abs", "ok", "manifest"):
        assert word in res.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["manifest.json", "student.int8.onnx"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    for args in ([str(bad)], [str(run_dir), "--int8"]):
        res = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert res.exit_code == 1 and "error:" in res.output
        assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, res.output


# ----------------------------------------------------------------------------------------- TensorRT


def test_trt_plain_helpers(tmp_path):
    assert tensorrt.profile_shapes((1, 3, 256, 256), False) is None
    p = tensorrt.profile_shapes((1, 3, 256, 256), True, stride=4)
    assert p.min == (1, 3, 128, 128) and p.opt == (1, 3, 256, 256) and p.max == (8, 3, 512, 512)
    p = tensorrt.profile_shapes((1, 3, 32, 32), True, stride=32)
    assert p.min == (1, 3, 32, 32) and p.max[2] % 32 == 0
    graphs = {"fp32": tmp_path / "m.onnx", "int8": tmp_path / "m.int8.onnx"}
    assert tensorrt.onnx_for_precision("int8", graphs).name == "m.int8.onnx"
    with pytest.raises(CrdError, match="fp16 ONNX graph"):
        tensorrt.onnx_for_precision("fp16", graphs)
    a = tensorrt.timing_cache_path("10.3.0", "NVIDIA Jetson AGX Orin", tmp_path)
    assert a.parent == tmp_path / "tensorrt" and a.name == "timing-10.3.0-nvidia-jetson-agx-orin.cache"
    assert tensorrt.timing_cache_path("10.3.0", "NVIDIA H100", tmp_path) != a


def test_trt_probe_reports_without_crashing(tmp_path):
    import importlib.util

    probe = tensorrt.probe_tensorrt()
    if importlib.util.find_spec("tensorrt") is None:  # this machine: the reason names the missing package
        assert not probe.available and "TensorRT is not installed" in probe.reason
    elif torch.cuda.is_available():
        assert probe.available or "Builder" in probe.reason
    else:
        assert not probe.available and "no CUDA GPU" in probe.reason
    # a child that dies (as creating a TensorRT Builder without a GPU can) is reported, not fatal
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    dead = tensorrt.probe_tensorrt(str(crashing))
    assert not dead.available and "signal 11" in dead.reason


def test_build_engine_call_sequence_and_timing_cache(tmp_path):
    model = _kaiming(build_generator("mobile_resnet", 4, n_blocks=1))
    onnx_path = donnx.export_onnx(model, tmp_path / "m.onnx", (1, 3, SIZE, SIZE))
    calls: list = []
    trt = fake_tensorrt(calls)
    cache = tmp_path / "cache" / "timing.cache"
    profile = tensorrt.profile_shapes((1, 3, SIZE, SIZE), True, 4)
    build = tensorrt.build_engine(onnx_path, tmp_path / "m.fp32.engine", profile=profile, workspace_gb=1.5,
                                  timing_cache=cache, trt=trt)
    names = [c[0] for c in calls]
    assert names == ["Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config",
                     "set_memory_pool_limit", "builder_optimization_level", "clear_flag",
                     "create_optimization_profile", "set_shape", "add_optimization_profile", "create_timing_cache",
                     "set_timing_cache", "build_serialized_network", "Runtime", "deserialize_cuda_engine"]
    assert ("create_network", 1 << 5) in calls and ("set_memory_pool_limit", "WORKSPACE", int(1.5 * 2**30)) in calls
    assert ("set_shape", "input", profile.min, profile.opt, profile.max) in calls
    assert ("create_timing_cache", b"") in calls and build.strongly_typed
    assert (tmp_path / "m.fp32.engine").read_bytes() == onnx_path.read_bytes()
    assert cache.read_bytes() == b"+entry"

    calls.clear()  # the second build starts from the saved cache and extends it
    tensorrt.build_engine(onnx_path, tmp_path / "again.engine", timing_cache=cache, trt=fake_tensorrt(calls))
    assert ("create_timing_cache", b"+entry") in calls and "set_shape" not in [c[0] for c in calls]
    assert cache.read_bytes() == b"+entry+entry"

    calls.clear()
    tensorrt.build_engine(onnx_path, tmp_path / "weak.engine", trt=fake_tensorrt(calls, strongly_typed=False))
    assert ("create_network", 0) in calls and "create_timing_cache" not in [c[0] for c in calls]

    out = tensorrt.run_engine(tmp_path / "m.fp32.engine", smooth_noise_images(2, SIZE), trt=trt, device="cpu")
    assert out.shape == (2, 3, SIZE, SIZE)
    assert ("execute_async_v3", 0) in calls and ("set_input_shape", "input", (1, 3, SIZE, SIZE)) in calls

    with pytest.raises(CrdError, match="cannot parse m.onnx: In node 3"):
        tensorrt.build_engine(onnx_path, tmp_path / "x.engine", trt=fake_tensorrt([], fail_parse=True))
    with pytest.raises(CrdError, match="could not build"):
        tensorrt.build_engine(onnx_path, tmp_path / "y.engine", trt=fake_tensorrt([], fail_build=True))
    assert not (tmp_path / "x.engine").exists() and not (tmp_path / "y.engine").exists()


def test_export_trt_with_stub_builds_and_verifies(run_dir, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    monkeypatch.setattr(tensorrt, "probe_tensorrt", lambda: tensorrt.TrtProbe(True, "10.3.0-stub", "Stub GPU"))
    real_verify = tensorrt.verify_engine
    monkeypatch.setattr(tensorrt, "verify_engine", lambda *a, **k: real_verify(*a, device="cpu", **k))
    res = export_artifacts(run_dir, tmp_path / "o", trt="int8", verify_images=2, calib_images=4,
                           timing_cache=tmp_path / "t.cache")
    rows = {r.kind: r for r in res.rows}
    assert rows["trt-int8"].status == "ok" and res.trt_message is None
    # the int8 engine was built from the QDQ graph, and computes exactly what onnxruntime does with it
    assert ("parse_from_file", "student.int8.onnx") in calls
    assert rows["trt-int8"].parity.psnr_db == pytest.approx(rows["onnx-int8-qdq"].parity.psnr_db, abs=1e-3)
    m = json.loads(res.manifest.read_text())
    trt_entry = next(a for a in m["artifacts"] if a["kind"] == "trt-int8")
    assert trt_entry["notes"]["onnx"] == "student.int8.onnx" and trt_entry["notes"]["tensorrt"] == "10.3.0-stub"
    assert (tmp_path / "o" / "student.int8.engine").is_file() and (tmp_path / "t.cache").is_file()


def test_run_trt_runner_with_stub_matches_onnx_runner(exported, dataset, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_trt_under_test", REPO / "export" / "run_trt.py")
    run_trt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_trt)

    class CpuDevice:  # numpy buffers stand in for GPU memory; the binding logic is the runner's own
        name, handle = "cpu-stub", 0

        def empty(self, shape, dtype):
            a = np.zeros(shape, dtype)
            return a, a.ctypes.data

        def upload(self, buf, array):
            buf[...] = array

        def download(self, buf):
            return buf.copy()

        def sync(self):
            pass

    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    monkeypatch.setattr(run_trt, "pick_device", lambda force: CpuDevice())
    engine = tmp_path / "student.fp32.engine"  # the stub's "engine" is the ONNX graph itself
    engine.write_bytes(exported.artifacts["onnx-fp32"].read_bytes())
    (tmp_path / "manifest.json").write_bytes(exported.manifest.read_bytes())
    assert run_trt.main([str(engine), str(dataset / "testA"), str(tmp_path / "trt"), "--warmup", "2"]) == 0
    assert [c for c in calls if c[0] == "set_input_shape"] == [("set_input_shape", "input", (1, 3, SIZE, SIZE))]
    assert sum(c[0] == "execute_async_v3" for c in calls) == 2 + 6

    run_onnx = REPO / "export" / "run_onnx.py"
    subprocess.run([sys.executable, str(run_onnx), str(exported.artifacts["onnx-fp32"]), str(dataset / "testA"),
                    str(tmp_path / "ort")], check=True, capture_output=True, timeout=120)
    for png in sorted((tmp_path / "ort").glob("*.png")):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "trt" / png.name)))


def test_export_trt_missing_is_skipped_cleanly(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorrt, "probe_tensorrt",
                        lambda: tensorrt.TrtProbe(False, reason="no CUDA GPU is visible to torch"))
    res = export_artifacts(run_dir, tmp_path / "o", trt="fp32", verify_images=2)
    assert res.trt_message == "no CUDA GPU is visible to torch"
    assert {r.kind: r.status for r in res.rows}["trt-fp32"].startswith("skipped")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["manifest.json", "student.onnx"]
    assert json.loads(res.manifest.read_text())["tensorrt"] == {"built": False,
                                                                "reason": "no CUDA GPU is visible to torch"}


# ----------------------------------------------------------------------------------------- super-resolution

SR_SET5 = REPO.parent / "shared" / "data" / "sr" / "Set5"
SR_STUDENT = REPO / "benchmarks" / "results" / "sr" / "b-student.safetensors"
LR_SIZES = ((20, 24), (18, 30), (24, 20))  # whole LR images of different sizes: one dynamic graph serves all


@pytest.fixture(scope="module")
def sr_student(tmp_path_factory) -> Path:
    """A tiny sr_resnet with O(1) activations in its residual branch (the bilinear skip carries the image)."""
    from crdtool.models.registry import family_spec

    model = _kaiming(build_generator(family_spec("sr_resnet", ngf=4, n_blocks=1)), seed=1)
    return save_generator(model, tmp_path_factory.mktemp("sr") / "tiny.safetensors")


@pytest.fixture(scope="module")
def lr_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lr")
    for i, (h, w) in enumerate(LR_SIZES):
        img = to_uint8(smooth_noise_images(1, max(h, w), seed=10 + i))[0][:h, :w]
        Image.fromarray(img).save(folder / f"{i}.png")
    return folder


def test_sr_export_fp16_and_int8_are_scored_by_psnr_y_on_lr_images(sr_student, lr_folder, tmp_path):
    from crdtool.data.sr import read_uint8, to_tensor
    from crdtool.data.sr import to_uint8 as sr_uint8
    from crdtool.deploy.sr import export_sr
    from crdtool.metrics.sr import psnr_y
    from crdtool.models.checkpoints import load_generator

    res = export_sr(sr_student, tmp_path / "o", fp16=True, int8=True, images=lr_folder, calib_images=2)
    assert set(res.artifacts) == {"onnx-fp32", "onnx-fp16", "onnx-int8-qdq"} and not res.synthetic
    m = json.loads(res.manifest.read_text())
    assert m["task"] == "sr" and m["output"]["scale"] == 4
    assert m["verification"]["lr_sizes"] == [list(s) for s in LR_SIZES]
    assert m["calibration"]["n_images"] == 2 and "verification images" in m["calibration"]["images"]
    entries = {a["kind"]: a for a in m["artifacts"]}
    assert entries["onnx-int8-qdq"]["notes"]["calibration_images"] == 2
    for kind, entry in entries.items():
        assert entry["sha256"] == sha256_file(tmp_path / "o" / entry["file"]) and entry["status"] == "ok"
        assert entry["parity"]["metric"] == "psnr_y" and entry["parity"]["n_images"] == 3
    assert entries["onnx-fp32"]["parity"]["max_abs"] <= donnx.FP32_MAX_ABS
    fp16_db, int8_db = entries["onnx-fp16"]["parity"]["psnr_y_db"], entries["onnx-int8-qdq"]["parity"]["psnr_y_db"]
    assert int8_db < fp16_db and int8_db >= entries["onnx-int8-qdq"]["parity"]["psnr_y_min_db"]
    # int8 is a real QDQ graph, fp16 a float16 one; both keep dynamic LR sides and float32 I/O
    assert quantize.count_ops(res.artifacts["onnx-int8-qdq"], ["QuantizeLinear"])["QuantizeLinear"] > 0
    half = onnx.load(str(res.artifacts["onnx-fp16"]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    for path in res.artifacts.values():
        g = onnx.load(str(path)).graph
        assert not g.input[0].type.tensor_type.shape.dim[2].HasField("dim_value")
        assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # the manifest's PSNR-Y is what an SR paper's scorer gives for the int8 output of one image
    one = export_sr(sr_student, tmp_path / "one", int8=True, images=[read_uint8(lr_folder / "1.png")])
    x = to_tensor(read_uint8(lr_folder / "1.png"))[None]
    with torch.no_grad():
        ref = sr_uint8(load_generator(sr_student)(x)[0])
    out = donnx.run_onnx(one.artifacts["onnx-int8-qdq"], x)
    assert out.shape == (1, 3, 72, 120)
    got = sr_uint8(torch.from_numpy(out)[0])
    parity = json.loads(one.manifest.read_text())["artifacts"][1]["parity"]
    assert parity["psnr_y_db"] == pytest.approx(psnr_y(got, ref, 4), abs=1e-3)


def test_sr_export_cli_and_errors(sr_student, lr_folder, tmp_path):
    from typer.testing import CliRunner

    from crdtool.cli import app

    res = CliRunner().invoke(app, ["export", str(sr_student), "--fp16", "--int8-cpu", "--images", str(lr_folder),
                                   "--calib-images", "2", "-o", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert {r["kind"]: r["status"] for r in doc["rows"]} == {"onnx-fp32": "ok", "onnx-fp16": "ok",
                                                             "onnx-int8-qdq": "ok"}
    assert doc["dynamic"] and doc["calibration"].endswith("(the verification images)")
    res = CliRunner().invoke(app, ["export", str(sr_student), "--fp16", "--images", str(lr_folder), "-o",
                                   str(tmp_path / "o")])
    assert res.exit_code == 0 and "PSNR-Y" in res.output and "tiny.fp16.onnx" in res.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())  # the int8 graph of the first run stays
    assert {a["kind"] for a in manifest["artifacts"]} == {"onnx-fp32", "onnx-fp16", "onnx-int8-qdq"}
    for args, msg in ((["--openvino"], "ONNX (fp32, --fp16, --int8-cpu) and TensorRT only"),
                      (["--no-onnx"], "nothing to export")):
        res = CliRunner().invoke(app, ["export", str(sr_student), "-o", str(tmp_path / "x"), *args])
        assert res.exit_code == 1 and msg in res.output and not (tmp_path / "x").exists(), res.output


def test_sr_trt_profile_is_on_the_lr_input():
    p = tensorrt.sr_profile_shapes((180, 320), [(57, 86), (128, 128)])
    assert p.min == (1, 3, 57, 86) and p.opt == (1, 3, 180, 320) and p.max == (8, 3, 360, 640)
    p = tensorrt.sr_profile_shapes((16, 16), [(20, 24), (18, 30)], max_batch=2)
    assert p.min == (1, 3, 8, 8) and p.max == (2, 3, 32, 32)
    p = tensorrt.sr_profile_shapes((16, 16), [(40, 4)])
    assert p.min == (1, 3, 8, 4) and p.max[2:] == (40, 32)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_sr_export_trt_with_stub_builds_on_lr_profile_and_outputs_x4(sr_student, lr_folder, tmp_path, monkeypatch,
                                                                     precision):
    from crdtool.deploy.sr import export_sr

    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    monkeypatch.setattr(tensorrt, "probe_tensorrt", lambda: tensorrt.TrtProbe(True, "10.3.0-stub", "Stub GPU"))
    real_each = tensorrt.run_engine_each
    monkeypatch.setattr(tensorrt, "run_engine_each", lambda *a, **k: real_each(*a, device="cpu", **k))
    res = export_sr(sr_student, tmp_path / "o", trt=precision, images=lr_folder, lr_size=16, calib_images=2,
                    timing_cache=tmp_path / "t.cache")
    rows = {r.kind: r for r in res.rows}
    assert rows[f"trt-{precision}"].status == "ok" and res.trt_message is None
    graph = "tiny.onnx" if precision == "fp32" else "tiny.int8.onnx"
    assert ("parse_from_file", graph) in calls
    # the one profile names the LR input: typical 16x16, widened to every verification image's LR size
    assert ("set_shape", "input", (1, 3, 8, 8), (1, 3, 16, 16), (8, 3, 32, 32)) in calls
    # the engine ran every LR image and returned it 4x larger (the parity is measured against PyTorch's x4)
    shapes = [c[2] for c in calls if c[0] == "set_input_shape"]
    assert shapes == [(1, 3, *s) for s in LR_SIZES]
    onnx_row = rows["onnx-fp32" if precision == "fp32" else "onnx-int8-qdq"]
    assert rows[f"trt-{precision}"].parity.psnr_db == pytest.approx(onnx_row.parity.psnr_db, abs=1e-6)
    m = json.loads(res.manifest.read_text())
    entry = next(a for a in m["artifacts"] if a["kind"] == f"trt-{precision}")
    assert entry["notes"]["scale"] == 4 and entry["notes"]["profile"]["opt"] == [1, 3, 16, 16]
    assert (tmp_path / "o" / f"tiny.{precision}.engine").is_file()


@pytest.mark.skipif(not (SR_SET5.is_dir() and SR_STUDENT.is_file()), reason="needs ../shared/data/sr")
def test_sr_export_of_the_trained_student_on_set5_lr_images(tmp_path):
    """The committed Real-ESRGAN student, exported fp16 and int8 and verified on Set5's real LR images."""
    from crdtool.deploy.sr import export_sr

    res = export_sr(SR_STUDENT, tmp_path / "o", fp16=True, int8=True, images=SR_SET5)
    m = json.loads(res.manifest.read_text())
    assert m["verification"]["images"] == str(SR_SET5) and m["verification"]["n_images"] == 5
    parity = {a["kind"]: a["parity"] for a in m["artifacts"]}
    assert parity["onnx-fp16"]["psnr_y_db"] >= 45 and parity["onnx-int8-qdq"]["psnr_y_db"] >= 30


def test_sr_export_of_a_run_folder_verifies_on_its_eval_set_and_calibrates_on_its_train_sets(sr_student, tmp_path):
    from crdtool.deploy.sr import export_sr

    run = tmp_path / "run"
    run.mkdir()
    (run / "student.safetensors").write_bytes(sr_student.read_bytes())
    for split, n in (("train", 3), ("val", 2)):
        _write_images(tmp_path / "data" / split / "HR", smooth_noise_images(n, 32, seed=20 + n))
    (run / "recipe.toml").write_text(f'name = "t"\ntask = "sr"\n[data]\nroot = "{(tmp_path / "data").as_posix()}"\n'
                                     'train_sets = ["train"]\neval_sets = ["val"]\ncrop_size = 16\n'
                                     '[student]\narch = "sr_resnet"\nngf = 4\nn_blocks = 1\n')
    res = export_sr(run, int8=True, calib_images=8)
    assert res.out_dir == run / "export" and res.artifacts["onnx-int8-qdq"].name == "student.int8.onnx"
    m = json.loads(res.manifest.read_text())
    assert m["verification"]["images"] == str(tmp_path / "data" / "val")
    assert m["verification"]["lr_sizes"] == [[8, 8], [8, 8]]  # 32 px HR, LR by MATLAB bicubic x1/4
    assert m["calibration"]["n_images"] == 3 and str(tmp_path / "data" / "train") in m["calibration"]["images"]
