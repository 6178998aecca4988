"""A new user's first hour through the CLI: nothing a command was not asked to touch is lost, and every
hint or message points the right way."""

from __future__ import annotations

import copy
import hashlib
import re
import shlex
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crdtool.cli import app
from crdtool.recipe import dump_toml
from crdtool.train.run_log import RunLog
from tests.helpers import TINY

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def write_tiny_recipe(folder: Path, **train) -> Path:
    d = copy.deepcopy(TINY)
    d["data"]["root"] = "data"
    d["data"]["synth"]["count"] = 8  # 8 teacher steps per epoch
    d["train"].update(train)
    path = folder / "tiny.toml"
    path.write_text(dump_toml(d))
    return path


def interrupt_at(monkeypatch, step: int) -> None:
    """Ctrl-C at ``step``: a real SIGINT, delivered to the handler the run installs."""
    track = RunLog.track

    def track_then_interrupt(self, losses):
        track(self, losses)
        if self.progress.step == step:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(RunLog, "track", track_then_interrupt)


def test_resume_hint_resumes_the_run_that_stopped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_tiny_recipe(tmp_path, max_steps=6)
    done = invoke("distill", str(recipe), "--max-steps", "1")
    assert done.exit_code == 0, done.output
    finished = snapshot(tmp_path / "runs" / "tiny")

    with monkeypatch.context() as m:
        interrupt_at(m, 5)
        stopped = invoke("distill", str(recipe), "--set", "output_dir=runs/sigint", "--set", "train.lr=1e-4")
    assert stopped.exit_code == 0, stopped.output
    hint = re.search(r"Resume with: (.+)", stopped.output).group(1).strip()
    assert hint == "crdtool distill runs/sigint --resume"

    resumed = invoke(*shlex.split(hint)[1:])
    assert resumed.exit_code == 0, resumed.output
    assert "steps 5 -> " in resumed.output
    assert snapshot(tmp_path / "runs" / "tiny") == finished  # the other run is untouched
    saved = (tmp_path / "runs" / "sigint" / "recipe.toml").read_text()
    assert "lr = 0.0001" in saved and 'output_dir = "runs/sigint"' in saved  # its --set values were kept

    again = snapshot(tmp_path / "runs" / "sigint")
    twice = invoke(*shlex.split(hint)[1:])
    assert twice.exit_code == 0, twice.output
    assert "has already finished" in twice.output and "nothing was changed" in twice.output
    assert snapshot(tmp_path / "runs" / "sigint") == again


def test_summary_after_an_early_interrupt_does_not_repeat_the_start_as_after(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_tiny_recipe(tmp_path, max_steps=6)
    interrupt_at(monkeypatch, 3)
    res = invoke("distill", str(recipe))
    assert res.exit_code == 0, res.output
    assert "step 0 (start)" in res.output
    assert "before" not in res.output and "after" not in res.output
    assert "no evaluation since step 0" in res.output


def test_distill_folder_without_recipe_is_one_line(tmp_path):
    res = invoke("distill", str(tmp_path), "--resume")
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f"error: {tmp_path} is a folder without recipe.toml: give a recipe "
                                               f"file or a run folder"]


# ------------------------------------------------------------------------------------------------ export

@pytest.fixture
def student_file(tmp_path) -> Path:
    from crdtool.models import build_generator
    from crdtool.models.checkpoints import save_generator
    from crdtool.models.registry import GeneratorSpec

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    path = tmp_path / "student.safetensors"
    save_generator(build_generator(GeneratorSpec("mobile_resnet", ngf=2, n_blocks=1)), path)
    return path


@pytest.mark.slow  # three real exports (dynamo): ~30 s on a busy 2-core host
def test_export_adds_to_an_export_and_never_deletes(student_file, tmp_path, monkeypatch):
    from crdtool.deploy import tensorrt
    from crdtool.deploy.manifest import read_manifest

    out = tmp_path / "export"
    first = invoke("export", str(student_file), "--int8-cpu", "--fp16", "--size", "32", "--calib-images", "4",
                   "-o", str(out))
    assert first.exit_code == 0, first.output
    int8, fp16 = out / "student.int8.onnx", out / "student.fp16.onnx"
    before = {p: digest(p) for p in (int8, fp16)}

    monkeypatch.setattr(tensorrt, "probe_tensorrt", lambda *a, **k: tensorrt.TrtProbe(False, reason="no TensorRT"))
    trt = invoke("export", str(student_file), "--trt", "--size", "32", "-o", str(out))
    assert trt.exit_code == 1 and "--trt skipped" in trt.output
    assert {p: digest(p) for p in (int8, fp16)} == before  # byte-identical, not deleted
    listed = {a["file"]: a for a in read_manifest(out / "manifest.json")["artifacts"]}
    assert set(listed) == {"student.onnx", "student.int8.onnx", "student.fp16.onnx"}
    assert not any("stale" in a for a in listed.values())

    # a changed source: the old reduced-precision files stay, marked stale, with a printed line
    from crdtool.models import build_generator
    from crdtool.models.checkpoints import save_generator
    from crdtool.models.registry import GeneratorSpec

    save_generator(build_generator(GeneratorSpec("mobile_resnet", ngf=2, n_blocks=1)), student_file)
    again = invoke("export", str(student_file), "--onnx", "--size", "32", "-o", str(out))
    assert again.exit_code == 0, again.output
    assert {p: digest(p) for p in (int8, fp16)} == before
    listed = {a["file"]: a for a in read_manifest(out / "manifest.json")["artifacts"]}
    assert "another source checkpoint" in listed["student.int8.onnx"]["stale"]
    assert "stale" not in listed["student.onnx"]
    assert "stale: student.int8.onnx" in again.output


# ------------------------------------------------------------------------------------------------ bench

@pytest.mark.slow  # a real export (dynamo) first: ~30 s on a busy 2-core host
def test_bench_reads_the_size_from_the_artifact(student_file, tmp_path):
    out = tmp_path / "export"
    exported = invoke("export", str(student_file), "--size", "32", "-o", str(out))
    assert exported.exit_code == 0, exported.output
    onnx_file = out / "student.onnx"
    fast = ["--runs", "3", "--warmup", "1", "--no-isolate", "--json", str(tmp_path / "b.json")]

    res = invoke("bench", str(onnx_file), *fast)
    assert res.exit_code == 0, res.output
    import json

    (row,) = json.loads((tmp_path / "b.json").read_text())["results"]
    assert row["error"] is None and row["size"] == 32 and row["macs"]

    wrong = invoke("bench", str(onnx_file), "--size", "64", *fast)
    assert wrong.exit_code == 1
    assert wrong.output.strip() == ("error: --size 64 does not fit student.onnx: its input is fixed at 32x32 "
                                    "(omit --size, or export with --dynamic)")
    odd = invoke("bench", str(student_file), "--size", "50", *fast)
    assert odd.exit_code == 1 and odd.output.strip() == ("error: --size 50 must be a positive multiple of 4 for "
                                                         "student.safetensors")


# ------------------------------------------------------------------------------------------ help, version

def test_version_prints_the_version():
    import crdtool

    res = invoke("--version")
    assert res.exit_code == 0 and res.output.strip() == f"crdtool {crdtool.__version__}"


def test_help_texts_keep_brackets_and_promise_only_what_exists():
    from crdtool.metrics.fid import FID_INSTALL_HINT

    bench_help = " ".join(invoke("bench", "--help").output.split())
    assert FID_INSTALL_HINT in bench_help  # pip install "crdtool[fid]"
    assert "Accept [budget*(1-window), budget]" in " ".join(invoke("search", "--help").output.split())
    assert "inspect" not in invoke("data", "--help").output and "inspect" not in invoke("--help").output
    for command in ("distill", "export", "bench", "quickstart", "profile", "search"):
        assert "<bool>" not in invoke(command, "--help").output


def test_fid_error_gives_the_same_install_hint(tmp_path):
    from crdtool.metrics.fid import FID_INSTALL_HINT

    res = invoke("fid-stats", str(tmp_path), "-o", str(tmp_path / "s.npz"), "--inception-weights",
                 str(tmp_path / "missing.pt"))
    assert res.exit_code == 1 and FID_INSTALL_HINT in res.output


def test_set_errors_name_the_command_line_not_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_tiny_recipe(tmp_path)
    res = invoke("distill", str(recipe), "--set", "train.lrr=1")
    assert res.exit_code == 1
    assert res.output.strip() == f"error: --set train.lrr=1: unknown key 'train.lrr' (recipe {recipe})"


def test_profile_of_a_run_folder_uses_its_training_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_tiny_recipe(tmp_path, max_steps=1)
    assert invoke("distill", str(recipe)).exit_code == 0
    res = invoke("profile", "runs/tiny")
    assert res.exit_code == 0, res.output
    assert "1x3x32x32" in res.output and "256" not in res.output


# ------------------------------------------------------------------------------------------------ progress

def test_piped_run_prints_plain_progress_lines_with_the_average_rate(tmp_path, monkeypatch):
    import crdtool.progress

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(crdtool.progress, "PLAIN_INTERVAL_S", 0.0)  # a line per step, as a long run gets one per 30 s
    recipe = write_tiny_recipe(tmp_path, max_steps=4)
    res = invoke("distill", str(recipe))
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if re.match(r"distill: +\d+% \d+/\d+ \[\d\d:\d\d<", ln)]
    assert len(lines) >= 6 and lines[-1].startswith("distill: 100% 12/12 [")
    assert re.search(r", [\d.]+ it/s\]", lines[-1]) and re.search(r"steps/s on average", res.output)


def test_plain_progress_rate_is_the_average_not_the_last_step(monkeypatch):
    import io

    from rich.console import Console

    import crdtool.progress as progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    with progress.StepProgress(Console(file=out, force_terminal=False), "distill", total=6, interval=0.0) as p:
        for step, t in enumerate([0.0, 1.0, 2.0, 12.0]):  # steps 1 and 2 take 1 s each, step 3 takes 10 s
            now[0] = t
            p.update(step)
    last = [ln for ln in out.getvalue().splitlines() if ln.startswith("distill:")][-1]
    assert last.startswith("distill:  50% 3/6 [00:12<") and last.endswith("0.25 it/s]")  # 3 steps / 12 s


def test_no_empty_progress_bar_before_an_early_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_tiny_recipe(tmp_path, max_steps=1)
    assert invoke("distill", str(recipe)).exit_code == 0
    res = invoke("distill", str(recipe))  # the run folder already holds a run
    assert res.exit_code == 1 and "already holds a run" in res.output
    assert "0/" not in res.output and "distill:" not in res.output


# ------------------------------------------------------------------------------------------ smaller findings

def test_crop_size_error_names_the_recipe_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = copy.deepcopy(TINY)
    d["data"].update(root="data", crop_size=30)
    recipe = tmp_path / "odd.toml"
    recipe.write_text(dump_toml(d))
    res = invoke("distill", str(recipe))
    assert res.exit_code == 1
    assert res.output.strip().startswith(f"error: {recipe}: data.crop_size 30 is not divisible by")


def test_bench_inputs_from_a_generated_dataset_are_not_called_real(tmp_path):
    from crdtool.bench.inputs import input_pool
    from crdtool.data.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "synth", size=16, count=4)
    _, desc = input_pool(2, 16, images=tmp_path / "synth" / "testA")
    assert "generated (crdtool data synth) images" in desc and "real" not in desc


def test_bench_compare_of_a_run_runs_at_its_training_size(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    recipe = write_tiny_recipe(tmp_path, max_steps=1)
    assert invoke("distill", str(recipe)).exit_code == 0
    res = invoke("bench", "runs/tiny", "--compare", "-b", "torch-cpu", "--runs", "2", "--warmup", "1", "--no-isolate",
                 "--json", "b.json")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["size"] for r in rows] == [32, 32]
    assert "measuring 1/2:" in res.output  # piped: one line per measurement


def test_bench_fid_without_inception_weights_fails_before_measuring(student_file, tmp_path):
    from crdtool.metrics.fid import FID_INSTALL_HINT

    res = invoke("bench", str(student_file), "--fid", "--inception-weights", str(tmp_path / "missing.pt"))
    assert res.exit_code == 1 and FID_INSTALL_HINT in res.output and "measuring" not in res.output
