"""crdtool bench: timing loop, backends, fidelity, isolation, reports and the CLI, on tiny models.

GPU paths cannot run here: what can be checked on CPU is (the TensorRT runner against a stub
TensorRT, the timing loop's host-I/O accounting, the errors when no GPU is present).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from crdtool.bench import artifacts as A
from crdtool.bench import latency as L
from crdtool.bench import report as R
from crdtool.bench import runners as RN
from crdtool.bench.quality import eval_split
from crdtool.errors import CrdError
from crdtool.models.checkpoints import load_generator, save_generator
from crdtool.models.registry import build_generator

SIZE = 32


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    t = save_generator(build_generator("resnet", 8, n_blocks=2), d / "teacher.safetensors")
    s = save_generator(build_generator("mobile_resnet", 4, n_blocks=2), d / "student.safetensors")
    return d, t, s


@pytest.fixture(scope="module")
def student_onnx(models):
    from crdtool.deploy.onnx import export_onnx

    d, _, s = models
    return export_onnx(load_generator(s), d / "onnx" / "student.onnx", input_shape=(1, 3, SIZE, SIZE))


def _images(folder: Path, n: int, size: int = 40, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_warmup_parsing():
    auto = L.Warmup.parse("auto")
    assert (auto.runs, auto.seconds) == (50, 1.0)
    assert not auto.done(2, 5.0) and auto.done(3, 1.5) and auto.done(50, 0.1) and not auto.done(10, 0.5)
    assert L.Warmup.parse("7").done(7, 0) and not L.Warmup.parse("7").done(6, 99)
    sec = L.Warmup.parse("0.5s")
    assert sec.done(1, 0.6) and not sec.done(100, 0.4)
    assert L.Warmup.parse("0").done(0, 0)
    for bad in ("x", "-3", "-1s"):
        with pytest.raises(CrdError, match="--warmup"):
            L.Warmup.parse(bad)


def test_backend_parsing_and_compatibility():
    assert RN.parse_backend("torch-cuda-graph:bf16") == RN.Backend("torch-cuda-graph", "bf16")
    assert RN.parse_backend("ort-cpu").label == "ort-cpu" and RN.parse_backend("ort-cpu").device_type == "cpu"
    for bad, msg in (("tflite", "unknown backend"), ("ort-cpu:fp16", "no precision"), ("torch-cuda:int4", "precision")):
        with pytest.raises(CrdError, match=msg):
            RN.parse_backend(bad)
    assert RN.artifact_kind("a/x.onnx") == "onnx" and RN.artifact_kind("x.plan") == "engine"
    assert RN.artifact_kind("w.safetensors") == "torch"
    with pytest.raises(CrdError, match="cannot tell"):
        RN.artifact_kind("model.tflite")
    with pytest.raises(CrdError, match="ort-"):
        RN.check_compatible("onnx", RN.parse_backend("torch-cpu"), "m.onnx")
    if not torch.cuda.is_available():
        assert RN.default_backend("torch").label == "torch-cpu" and RN.default_backend("onnx").label == "ort-cpu"


def test_summarize_percentiles():
    times = [5.0, 1.0, 4.0, 2.0, 3.0, 100.0]
    s = L.summarize(times, batch=2)
    assert s["median_ms"] == 3.5 and s["min_ms"] == 1.0
    assert s["p90_ms"] == pytest.approx(np.percentile(times, 90)) and s["p99_ms"] == pytest.approx(95.25)
    assert s["throughput_ips"] == pytest.approx(2 * 1000 / 3.5)
    with pytest.raises(CrdError):
        L.summarize([], 1)


def test_measure_torch_cpu_on_real_images(models, tmp_path):
    _, _, s = models
    folder = _images(tmp_path / "imgs", 3)
    r = L.measure_latency(s, "torch-cpu", size=SIZE, warmup="2", runs=6, images=str(folder), name="student")
    assert r.ok, r.error
    assert r.runs == 6 == len(r.times_ms) and r.warmup_runs == 2
    assert r.min_ms <= r.median_ms <= r.p90_ms <= r.p99_ms and r.min_ms > 0
    assert r.throughput_ips == pytest.approx(1000 / r.median_ms)
    assert "3 real images" in r.inputs and str(folder) in r.inputs
    assert r.threads == L.physical_cores() == r.device["threads"] and r.device["cpu"]
    assert r.versions["torch"] == torch.__version__ and "host memory" in r.includes
    assert r.fidelity is None  # torch-cpu fp32 is the reference itself
    x, desc = L.input_pool(4, SIZE)  # no folder: deterministic smooth noise, never zeros
    assert "synthetic" in desc and x.shape == (4, 3, SIZE, SIZE) and x.std() > 0.1
    assert torch.equal(x, L.input_pool(4, SIZE)[0]) and x.abs().max() <= 1


def test_max_seconds_makes_runs_adaptive(models):
    _, _, s = models
    r = L.measure_latency(s, "torch-cpu", size=SIZE, warmup="1", runs=100000, max_seconds=0.3)
    assert r.ok and 5 <= r.runs < 100000 and r.runs_requested == 100000


def test_ort_cpu_fidelity_and_precision(models, student_onnx, tmp_path):
    _, _, s = models
    r = L.measure_latency(student_onnx, "ort-cpu", size=SIZE, warmup="2", runs=5, reference=str(s), threads=1)
    assert r.ok, r.error
    assert r.kind == "onnx" and r.precision == "fp32" and r.threads == 1
    assert r.fidelity["psnr_db"] is None or r.fidelity["psnr_db"] > 80  # None: identical (infinite PSNR)
    assert r.fidelity["max_abs"] < 1e-4 and r.fidelity["reference"] == str(s)
    # the IO-binding path that ort-cuda / ort-trt use, bound on CPU memory here: same outputs as a plain run
    plain = RN.OrtRunner(student_onnx, RN.parse_backend("ort-cpu"), 1, 1, SIZE)
    bound = RN.OrtRunner(student_onnx, RN.parse_backend("ort-cpu"), 1, 1, SIZE, io_binding_device="cpu")
    x = L.input_pool(2, SIZE)[0]
    for xi in x.split(1):  # two inputs through the same preallocated output buffer
        torch.testing.assert_close(bound(xi), plain(xi))
    assert bound.fixed_batch == 1
    wrong = L.measure_latency(student_onnx, "ort-cpu", batch=2, size=SIZE, warmup="1", runs=2)
    assert not wrong.ok and "--batch 1" in wrong.error
    # INT8 QDQ: detected as int8, and its loss shows in the fidelity
    from crdtool.data.synth import smooth_noise_images
    from crdtool.deploy.quantize import quantize_int8_qdq

    q = quantize_int8_qdq(student_onnx, tmp_path / "student-int8.onnx", smooth_noise_images(4, SIZE))
    r8 = L.measure_latency(q, "ort-cpu", size=SIZE, warmup="1", runs=3, reference=str(s))
    assert r8.ok and r8.precision == "int8"
    assert r8.fidelity["max_abs"] > r.fidelity["max_abs"] and 10 < r8.fidelity["psnr_db"] < 80


def test_errors_are_results_not_crashes(models, tmp_path):
    _, _, s = models
    missing = L.measure_latency(tmp_path / "nope.safetensors", "torch-cpu", size=SIZE, runs=2)
    assert not missing.ok and "not found" in missing.error
    bad = L.measure_latency(s, "tflite", size=SIZE, runs=2)
    assert not bad.ok and "unknown backend" in bad.error
    if not torch.cuda.is_available():
        gpu = L.measure_latency(s, "torch-cuda-graph:bf16", size=SIZE, runs=2)
        assert not gpu.ok and "CUDA GPU" in gpu.error
        (tmp_path / "m.engine").write_bytes(b"\0")
        trt = L.measure_latency(tmp_path / "m.engine", "trt", size=SIZE, runs=2)
        assert not trt.ok and "GPU" in trt.error
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        no_ep = L.measure_latency(s, "ort-cuda", size=SIZE, runs=2, onnx=None)
        assert not no_ep.ok


def test_isolated_worker_and_temp_export(models, student_onnx, monkeypatch):
    from crdtool.profile import profile_checkpoint

    _, _, s = models
    seen = []
    res = L.bench_artifacts([s], ["torch-cpu"], size=SIZE, warmup="1", runs=3, on_start=seen.append,
                            command="crdtool bench test")
    r = res[0]
    assert r.ok, r.error
    assert r.runs == 3 and r.command == "crdtool bench test" and len(seen) == 1
    prof = profile_checkpoint(s, SIZE)
    assert (r.macs, r.macs_exact, r.params) == (prof.total("literature"), prof.total("exact"), prof.params)
    # a checkpoint on onnxruntime is exported on the fly (once per shape; the fixture's export stands in for
    # it here); fidelity is against the checkpoint itself
    exports = []

    def fake_export(artifact, path, batch, size):
        exports.append((artifact, batch, size))
        path.write_bytes(Path(student_onnx).read_bytes())
        return path

    monkeypatch.setattr(L, "export_temp_onnx", fake_export)
    ort = L.bench_artifacts([s, s], ["ort-cpu"], isolate=False, size=SIZE, warmup="1", runs=3)
    assert exports == [(str(s), 1, SIZE)]
    assert all(r.ok for r in ort), ort[0].error
    assert ort[0].kind == "torch" and ort[0].backend == "ort-cpu" and ort[0].fidelity["max_abs"] < 1e-4


def test_bench_without_fvcore_times_and_leaves_macs_unknown(models, monkeypatch):
    # a GPU or edge box with only the runtime packages: counting MACs is a one-line error, timing goes on
    from crdtool.profile import profile_checkpoint

    _, _, s = models
    for name in ("fvcore", "fvcore.nn", "fvcore.nn.jit_handles"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(CrdError, match="counting MACs needs fvcore") as e:
        profile_checkpoint(s, SIZE)
    assert "\n" not in str(e.value)
    r = L.bench_artifacts([s], ["torch-cpu"], isolate=False, size=SIZE, warmup="1", runs=2)[0]
    assert r.ok and r.runs == 2 and r.macs is None and r.params is None


def test_manifest_gives_macs_and_reference(models, student_onnx, tmp_path):
    from crdtool.profile import profile_checkpoint

    _, _, s = models
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(Path(student_onnx).read_bytes())
    assert A.manifest_entry(onnx) == {} and A.profile_artifact(onnx, SIZE) is None
    spec = load_generator(s).spec
    (tmp_path / "manifest.json").write_text(json.dumps({
        "format": "crdtool.export", "version": 1, "source": {"path": str(s), "generator": spec.to_dict()},
        "artifacts": [{"file": "model.onnx", "kind": "onnx-fp32"}, {"file": "x.onnx", "kind": "onnx-fp16"}]}))
    entry = A.manifest_entry(onnx)
    assert entry["source"] == str(s) and entry["kind"] == "onnx-fp32" and entry["spec"] == spec
    assert A.resolve_reference(onnx) == str(s)
    prof = profile_checkpoint(s, SIZE)
    got = A.profile_artifact(onnx, SIZE)
    assert (got.total("literature"), got.params, got.total("exact")) == (
        prof.total("literature"), prof.params, prof.total("exact"))


class _CountingRunner(RN.Runner):
    def __init__(self):
        self.calls = {"upload": 0, "run": 0, "output": 0}

    def upload(self, x):
        self.calls["upload"] += 1
        return x

    def run(self):
        self.calls["run"] += 1

    def output(self):
        self.calls["output"] += 1
        return self._x


def test_timing_loop_accounts_for_host_io():
    pool = [torch.zeros(1, 3, 4, 4) + i for i in range(3)]
    dev = _CountingRunner()
    handles = [dev.upload(x) for x in pool]
    times, warm, _, timing, includes = L._timed_loop(dev, handles, pool, L.Warmup.parse("4"), 10, None, False)
    assert len(times) == 10 and warm == 4 and dev.calls == {"upload": 3, "run": 14, "output": 0}
    assert "wall clock" in timing and includes == dev.includes_device
    host = _CountingRunner()
    L._timed_loop(host, [], pool, L.Warmup.parse("2"), 5, None, True)
    assert host.calls == {"upload": 7, "run": 7, "output": 7}


def _doubler_onnx(path: Path, shape: list) -> Path:
    """A one-node ONNX graph, output = 2 * input, with a static or symbolic (str) input shape."""
    import onnx
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["input", "two"], ["output"])], "doubler",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], [two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_tensorrt_runner_binds_buffers_by_name(tmp_path):
    from tests.helpers import fake_tensorrt

    calls: list = []
    trt = fake_tensorrt(calls)
    path = _doubler_onnx(tmp_path / "m.engine", [1, 3, 8, 8])  # the stand-in's engines are ONNX files
    runner = RN.TensorRTRunner(path, 1, 8, trt=trt, device="cpu")
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(runner(x), 2 * x)
    assert runner.fixed_batch == 1 and not runner.use_events
    with pytest.raises(CrdError, match="--batch 1 --size 8"):
        RN.TensorRTRunner(path, 2, 8, trt=trt, device="cpu")
    dyn = _doubler_onnx(tmp_path / "d.engine", ["batch", 3, "h", "w"])
    calls.clear()
    runner = RN.TensorRTRunner(dyn, 2, 16, trt=trt, device="cpu")
    assert ("set_input_shape", "input", (2, 3, 16, 16)) in calls and runner.fixed_batch is None
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(runner(x), 2 * x)


def _result(name, backend, median, macs, **kw):
    return L.LatencyResult(f"{name}.safetensors", name, "torch", backend, "fp32", 1, 256, threads=2, warmup="auto",
                           runs=200, runs_requested=200, median_ms=median, p90_ms=median * 1.1, p99_ms=median * 1.2,
                           min_ms=median * 0.9, throughput_ips=1000 / median, macs=macs, timing="perf_counter",
                           includes="host", inputs="synthetic", device={"cpu": "TestCPU", "threads": 2}, **kw)


def test_report_document_markdown_and_plot(tmp_path):
    results = [_result("teacher", "ort-cpu", 900.0, 56_800_000_000),
               _result("student", "ort-cpu", 18.0, 1_410_000_000,
                       fidelity={"psnr_db": float("inf"), "max_abs": 0.0, "mean_abs": 0.0, "n_images": 4}),
               L.LatencyResult("x.onnx", "broken", "onnx", "ort-cuda", "?", 1, 256, error="no CUDA")]
    comps = R.speedups(results[:1], results[1:])
    assert len(comps) == 1 and comps[0].ratio == pytest.approx(50.0)
    doc = R.bench_document(results, comps, command="crdtool bench x", notes=["a note"], load_avg_start=[1.0, 1, 1])
    text = json.dumps(doc, allow_nan=False)  # infinite PSNR must not leak into the JSON
    assert doc["format"] == "crdtool.bench" and doc["version"] == 1 and '"speedup": 50.0' in text
    assert doc["results"][1]["fidelity"]["psnr_db"] is None and doc["host"]["load_avg_start"] == [1.0, 1, 1]
    md = R.markdown_report(doc, "Latency")
    assert "`crdtool bench x`" in md and "| student | ort-cpu | fp32 | 1.41G | 18.00 |" in md
    assert "50.0x" in md and "error: no CUDA" in md and "- a note" in md
    png = R.plot_latency_vs_macs(results, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(R.render_table(results, comps))
    out = console.export_text()
    assert "teacher" in out and "50.0x" in out and "no CUDA" in out


def _app():
    from crdtool.commands.bench import bench, fid_stats

    app = typer.Typer()
    app.command("bench")(bench)
    app.command("fid-stats")(fid_stats)
    return app


def test_cli_compare_json_on_stdout(models):
    _, t, s = models
    res = CliRunner().invoke(_app(), ["bench", str(t), str(s), "--compare", "-b", "torch-cpu", "--size", str(SIZE),
                                      "--warmup", "1", "--runs", "3", "--no-isolate", "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    t_r, s_r = doc["results"]
    assert t_r["name"] == "teacher resnet ngf8" and s_r["name"] == "student mobile_resnet ngf4"
    (c,) = doc["comparisons"]
    assert c["speedup"] == pytest.approx(t_r["median_ms"] / s_r["median_ms"])
    bad = CliRunner().invoke(_app(), ["bench", str(t), "-b", "nope", "--no-isolate"])
    assert bad.exit_code == 1 and "unknown backend" in bad.output


def test_compare_pair_from_recipe_builds_random_weights(tmp_path, monkeypatch):
    recipe = Path(__file__).resolve().parents[1] / "crdtool" / "recipes" / "quickstart.toml"
    monkeypatch.chdir(tmp_path)
    pair = A.resolve_pair([recipe], tmp_path)
    from crdtool.recipe import load_recipe

    r = load_recipe(recipe)
    assert pair.teacher_name == f"teacher {r.teacher.spec().describe()}"
    assert pair.student_name == f"student {r.student.spec().describe()}"
    assert Path(pair.teacher).is_file() and len(pair.notes) == 2 and "random weights" in pair.notes[0]
    with pytest.raises(CrdError, match="--compare"):
        A.resolve_pair(["a", "b", "c"], tmp_path)


def test_cli_fid_and_fid_stats(models, tmp_path, monkeypatch):
    from crdtool.metrics import fid as F

    # the 2048-d sqrtm takes minutes on a loaded 2-core CPU; its math is tested in test_fid.py, the
    # plumbing here: the distance must be taken between the artifact's statistics and the real ones
    calls = []

    def cheap_distance(mu1, s1, mu2, s2):
        calls.append((mu1, mu2))
        return float(((mu1 - mu2) ** 2).sum())

    monkeypatch.setattr(F, "frechet_distance", cheap_distance)

    _, _, s = models
    root = tmp_path / "data"
    _images(root / "testA", 2, seed=1)
    _images(root / "testB", 2, seed=2)
    weights = tmp_path / "inception.pth"
    torch.save(F.build_inception(random_init=True).state_dict(), weights)
    split = eval_split(root)
    assert [p.name for p in split.source] == ["0.png", "1.png"] and split.real[0].parent.name == "testB"
    res = CliRunner().invoke(_app(), ["bench", str(s), "-b", "torch-cpu", "--size", str(SIZE), "--warmup", "1",
                                      "--runs", "2", "--no-isolate", "--fid", "--data", str(root),
                                      "--inception-weights", str(weights), "--json", str(tmp_path / "b.json"),
                                      "--plot", str(tmp_path / "b.png")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "b.json").read_text())
    (q,) = doc["quality"]
    assert q["error"] is None and q["n_fake"] == 2 and q["n_real"] == 2 and q["fid"] > 0
    assert len(calls) == 1 and q["fid"] == pytest.approx(float(((calls[0][0] - calls[0][1]) ** 2).sum()))
    assert q["kid_mean"] is not None and "inputs" in doc["results"][0]
    assert "testA" in doc["results"][0]["inputs"]  # --data doubles as the latency input source
    assert (tmp_path / "b.png").is_file()
    out = tmp_path / "real.npz"
    res = CliRunner().invoke(_app(), ["fid-stats", str(root / "testB"), "-o", str(out), "--inception-weights",
                                      str(weights)])
    assert res.exit_code == 0, res.output
    st = F.load_stats(out)
    assert st.n == 2 and st.mu.shape == (2048,) and st.features.shape == (2, 2048)
    np.testing.assert_allclose(calls[0][1], st.mu, rtol=1e-5)  # bench compared against testB's statistics
    res = CliRunner().invoke(_app(), ["fid-stats", str(root / "testB"), "-o", str(tmp_path / "x.txt"),
                                      "--inception-weights", str(weights)])
    assert res.exit_code == 1 and ".npz" in res.output


def test_aligned_split_uses_the_right_halves(tmp_path):
    from crdtool.bench.quality import iter_split_images

    (tmp_path / "val").mkdir()
    ab = Image.new("RGB", (40, 20), (255, 0, 0))
    ab.paste((0, 0, 255), (20, 0, 40, 20))  # A (left) red | B (right) blue, like pix2pix files
    ab.save(tmp_path / "val" / "0.png")
    split = eval_split(tmp_path, "BtoA")
    assert split.aligned and split.source == split.real
    (_, src), = iter_split_images(split.source, split.aligned, "B", None, size=8)
    (_, real), = iter_split_images(split.real, split.aligned, "A", None)
    assert src.size == (8, 8) and src.getpixel((4, 4)) == (0, 0, 255)
    assert real.size == (20, 20) and real.getpixel((4, 4)) == (255, 0, 0)
    with pytest.raises(CrdError, match="test split"):
        eval_split(tmp_path / "val")
    with pytest.raises(CrdError, match="direction"):
        eval_split(tmp_path, "AtoC")
