"""Fault tolerance: SIGKILL anywhere (checkpoint writes included), SIGINT, non-finite losses, disk full."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crdtool import distill
from crdtool.errors import CrdError
from crdtool.train.student_step import StudentStep
from crdtool.train.state import latest_checkpoint, load_checkpoint
from tests.helpers import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "fault_runner.py"
SMALL = {"kind": "unpaired", "size": 32, "count": 8, "seed": 0}
# 8 images: teacher epoch (8 steps), student epoch (8), teacher, student, ...: 28 steps to 12 student steps.
TRAIN = {"max_steps": 12, "checkpoint_every": 5, "pool_size": 4}


def recipe_json(tmp_path: Path, name: str, data_root: Path) -> Path:
    r = tiny_recipe(tmp_path / name, data_root=data_root, data={"synth": SMALL}, train=TRAIN)
    d = r.model_dump(mode="json", exclude_none=True)
    d["output_dir"] = str(tmp_path / name / "run")
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(d))
    return p


def run(recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(RUNNER), str(recipe), *extra], capture_output=True, text=True,
                          env=env, timeout=600)


def final_weights(run_dir: Path) -> dict:
    return load_checkpoint(latest_checkpoint(run_dir)).weights


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    data = tmp / "data"
    r = tiny_recipe(tmp, data_root=data, data={"synth": SMALL})
    distill.prepare_data(r)
    p = recipe_json(tmp, "ref", data)
    out = run(p)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["steps"] == 28
    return data, final_weights(tmp / "ref" / "run")


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["step:3", "step:13", "save:1", "save:4", "pointer:2"])
def test_sigkill_then_resume_gives_identical_weights(tmp_path, reference, kill):
    data, ref = reference
    p = recipe_json(tmp_path, "k", data)
    out = run(p, "--kill", kill)
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stderr[-2000:])
    run_dir = tmp_path / "k" / "run"
    resume = ["--resume"] if latest_checkpoint(run_dir) is not None else []
    out = run(p, *resume)
    assert out.returncode == 0, out.stderr[-2000:]
    got = final_weights(run_dir)
    assert got.keys() == ref.keys()
    diff = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not diff, f"{kill}: resumed weights differ in {diff[:4]}"
    leftovers = [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers


@pytest.mark.slow
def test_sigint_checkpoints_and_exits_cleanly(tmp_path, reference):
    data, ref = reference
    p = recipe_json(tmp_path, "i", data)
    out = run(p, "--kill", "sigint:10")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"steps": 10, "interrupted": True}
    assert latest_checkpoint(tmp_path / "i" / "run").name == "step-00000010"
    out = run(p, "--resume")
    assert out.returncode == 0
    got = final_weights(tmp_path / "i" / "run")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.slow
def test_cli_sigint_prints_how_to_resume(tmp_path):
    r = tiny_recipe(tmp_path, data={"synth": SMALL}, train={"max_steps": 100000, "checkpoint_every": 1000})
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(r.to_toml())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "crdtool", "distill", str(recipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and '"train"' in metrics.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert "interrupted at step" in stdout and "--resume" in stdout
    assert latest_checkpoint(tmp_path / "run") is not None


def test_nonfinite_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    r = tiny_recipe(tmp_path, data={"synth": SMALL}, train={"max_steps": 12, "checkpoint_every": 5})
    real, calls = StudentStep.terms, [0]

    def poisoned(self, real_A, teacher_out, *rest):
        s, terms = real(self, real_A, teacher_out, *rest)
        calls[0] += 1
        if calls[0] == 7:  # the 7th student step = global step 15 (after 8 teacher steps)
            terms["crd"] = terms["crd"] * float("nan")
        return s, terms

    monkeypatch.setattr(StudentStep, "terms", poisoned)
    with pytest.raises(CrdError, match=r"non-finite loss at step 15 \(crd=nan.*Last good checkpoint: .*step-00000013"):
        distill.run(r)
    assert latest_checkpoint(tmp_path / "run").name == "step-00000013"
    calls[0] = 0
    skip = tiny_recipe(tmp_path / "skip", data_root=tmp_path / "data", data={"synth": SMALL},
                       train={"max_steps": 12, "checkpoint_every": 5, "nonfinite": "skip"})
    res = distill.run(skip)
    assert res.student_steps == 12 and res.steps == 29  # one extra step: the skipped one
    state = json.loads((latest_checkpoint(tmp_path / "skip" / "run") / "state.json").read_text())
    assert state["progress"]["skipped_steps"] == 1


def test_disk_full_while_checkpointing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    r = tiny_recipe(tmp_path, data={"synth": SMALL}, train={"max_steps": 12, "checkpoint_every": 5})
    real, calls = safetensors.torch.save_file, [0]

    def full_disk(tensors, filename, metadata=None):
        calls[0] += 1
        if calls[0] > 4:  # the first checkpoint (2 files) + its 2 generator exports succeed
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(CrdError) as e:
        distill.run(r)
    assert "No space left on device" in str(e.value) and str(tmp_path / "run") in str(e.value)
    last = latest_checkpoint(tmp_path / "run")
    assert last.name == "step-00000005"
    load_checkpoint(last)  # still complete and readable
