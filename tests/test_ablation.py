"""Smoke test of benchmarks/quality_ablation.py's machinery on a few real images at 32 px.

Trains a tiny cached teacher and every arm for 2 seeds on a 4-image view of photo2anime, scores them
with cheap pooled-colour features instead of Inception (the numbers test the plumbing, not the method) and
checks the budget rule, the statistics, the reports and that a second call reuses every result.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

TINY = {"data.load_size": 36, "data.crop_size": 32, "data.eval_images": 2, "teacher.ngf": 4, "teacher.n_blocks": 2,
        "student.ngf": 2, "student.n_blocks": 2, "discriminator.ndf": 4, "loss.patch_size": 8,
        "train.teacher_epochs": 1, "train.teacher_epochs_decay": 1, "train.student_epochs": 2, "train.pool_size": 2}


def _load_script():
    spec = importlib.util.spec_from_file_location("quality_ablation", ROOT / "benchmarks" / "quality_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_judge_margins_in_seed_std():
    qa = _load_script()
    per_seed = {"crd": {0: 10.0, 1: 12.0, 2: 14.0}, "instance_rkd": {0: 20.0, 1: 22.0, 2: 24.0},
                "no_kd": {0: 21.0, 1: 19.0, 2: 23.0}}
    arms = {a: {"fid": dict(zip(("mean", "std"), qa.mean_std(list(v.values()))))} for a, v in per_seed.items()}
    claims = {(c["better"], c["worse"]): c for c in qa.judge(per_seed, arms)}
    c = claims[("crd", "instance_rkd")]
    assert c["difference"] == pytest.approx(10.0) and c["pooled_std"] == pytest.approx(2.0)
    assert c["difference_in_std"] == pytest.approx(5.0) and c["held"] and c["clear"] and c["seed_wins"] == 3
    c = claims[("instance_rkd", "no_kd")]
    assert c["difference"] == pytest.approx(-1.0) and not c["held"] and not c["clear"]
    assert c["verdict"] == "reversed (within seed noise)"
    assert qa.headline(list(claims.values()))["kd_order"] == {"held": False, "clear": False}


def _cheap_features(s, images):
    """Stand-in for Inception (tested in test_fid): 8x8 average-pooled colours, 192 dims, in milliseconds."""
    import torch.nn.functional as TF

    return TF.adaptive_avg_pool2d(images.float(), 8).flatten(1).double().numpy()


def test_ablation_end_to_end_and_resume(shared_data, tmp_path, monkeypatch):
    qa = _load_script()
    monkeypatch.setattr(qa, "features", _cheap_features)
    s = qa.Settings(scale="cpu", datasets=["photo2anime"], seeds=[0, 1], data_root=shared_data,
                    runs_root=tmp_path / "runs", results_dir=tmp_path / "results", overrides=dict(TINY), subset=4,
                    fid_sqrtm=False, kid_subsets=5, grid_rows=3, log_every=10**6)
    res = s.results_dir / "quality_ablation-photo2anime-cpu"
    out = qa.run(s)["photo2anime"]
    data = json.loads(res.with_suffix(".json").read_text())
    assert data["format"] == "crdtool.quality-ablation" and data["version"] == 1
    assert set(data["arms"]) == set(qa.ARMS) and len(data["runs"]) == 10
    for r in data["runs"]:
        assert math.isfinite(r["fid"]) and r["fid"] > 0 and r["fid"] == pytest.approx(r["fid_exact"])
        assert math.isfinite(r["kid"]) and r["n"] == 4 and 5 < r["psnr_db"] < 60
        # equal budget: 2 epochs of the 4 training images for every arm; instance RKD takes them 4 per step
        assert r["images_seen"] == 8
        assert r["generator_steps"] == (2 if r["arm"] == "instance_rkd" else 8)
        assert r["d_init"] == ("teacher" if r["arm"] not in ("no_kd", "crd_no_d") else "scratch")
    for name, arm in data["arms"].items():
        fids = [r["fid"] for r in data["runs"] if r["arm"] == name]
        assert arm["n"] == 2 and arm["fid"]["mean"] == pytest.approx(np.mean(fids))
        assert arm["fid"]["std"] == pytest.approx(np.std(fids, ddof=1))
    for c in data["claims"]:
        assert c["held"] == (data["arms"][c["worse"]]["fid"]["mean"] > data["arms"][c["better"]]["fid"]["mean"])
    refs = data["references"]
    assert all(math.isfinite(refs[k]["fid"]) and refs[k]["fid"] > 0 for k in ("teacher", "inputs", "real_floor"))
    teacher_eval = next(s.runs_root.glob("cache/teacher-photo2anime-cpu-*/eval.json"))
    assert refs["teacher"]["fid"] == json.loads(teacher_eval.read_text())["fid"]
    md = res.with_suffix(".md").read_text()
    assert "| CRD, frozen D (paper) |" in md and "Does the paper's ordering hold here?" in md
    grid = Image.open(res.with_suffix(".png"))
    assert grid.size == (128 * 7, 14 + 128 * 3)  # input, teacher, 5 arms; 32 px shown at x4
    snippet = (s.results_dir / "quality_ablation-README-snippet.md").read_text()
    assert snippet.startswith("## Does it work?") and "no GPU was available" in snippet
    assert "quality_ablation-photo2anime-cpu.png" in snippet

    # a second call reuses every run and evaluation and reports the same numbers
    marks = sorted(s.runs_root.rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in marks if p.name in ("trained.json", "eval.json")}
    again = qa.run(s)["photo2anime"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert again["arms"]["crd"]["fid"] == out["arms"]["crd"]["fid"]
