"""Super-resolution: models (rrdb, SR students), MATLAB bicubic, Y-channel metrics, SR distillation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crdtool.data.sr import SRPatches, bicubic_down, imresize, load_eval_set, lr_file, mod_crop, read_uint8
from crdtool.errors import CrdError
from crdtool.metrics.sr import bicubic_upscale, psnr_y, score_set, ssim_y
from crdtool.models import build_generator
from crdtool.models.registry import family_spec
from crdtool.models.rrdb import convert_esrgan_state_dict, load_rrdb
from crdtool.models.sr_student import SR_OPS, save_sr_arch, sr_arch_macs, sr_arch_spec, validate_sr_arch
from crdtool.profile import profile_checkpoint, profile_model, profile_spec

from conftest import SHARED

SR_DATA = SHARED / "data" / "sr"
REAL_ESRGAN = SHARED / "weights" / "realesrgan_x4plus_rrdb.fp16.safetensors"


def _tiny_rrdb():
    return build_generator(family_spec("rrdb", ngf=8, n_blocks=2, num_grow_ch=4))


# ------------------------------------------------------------------------------------------ models


def test_rrdb_full_size_parameters_and_macs_formula():
    """16,697,987 parameters; the exact MACs at 256 follow from the layer shapes (1174.85G)."""
    model = build_generator(family_spec("rrdb"), init=False)
    assert sum(p.numel() for p in model.parameters()) == 16_697_987
    hw = 256 * 256
    rdb = sum((64 + 32 * i) * (32 if i < 4 else 64) * 9 for i in range(5))
    body = 23 * 3 * rdb * hw + 64 * 64 * 9 * hw
    tail = 64 * 64 * 9 * (hw * 4 + hw * 16 + hw * 16) + 64 * 3 * 9 * hw * 16
    assert body + 3 * 64 * 9 * hw + tail == 1_174_853_910_528


def test_rrdb_profile_conventions_match_flop_counter_and_agd_rule():
    """Small rrdb: exact == literature == FlopCounterMode/2 (no elementwise MACs), agd = + bias + LeakyReLU."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _tiny_rrdb().eval()
    p = profile_model(model, (1, 3, 16, 16))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 16, 16))
    assert 2 * p.macs["exact"] == counter.get_total_flops()
    assert p.macs["literature"] == p.macs["exact"]
    outputs: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.numel()))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 16, 16))
    for h in hooks:
        h.remove()
    bias = sum(outputs)  # every conv has a bias: thop adds one op per output element
    # LeakyReLU outputs: 4 per RDB (growth 4 channels) x 3 RDBs x 2 blocks at 16x16, then 3 in the 8-channel tail
    lrelu = 2 * 3 * 4 * 4 * 16 * 16 + 8 * (32 * 32 + 64 * 64 + 64 * 64)
    assert p.total("agd") == p.macs["exact"] + bias + lrelu


def test_rrdb_loads_basicsr_and_original_esrgan_layouts(tmp_path):
    model = _tiny_rrdb()
    state = model.state_dict()
    basicsr = tmp_path / "net_g.pth"
    torch.save({"params_ema": state}, basicsr)
    loaded = load_rrdb(basicsr)
    assert loaded.spec.ngf == 8 and loaded.spec.n_blocks == 2 and loaded.spec.num_grow_ch == 4 and loaded.spec.scale == 4
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        ref = model.eval()(x)
        assert torch.equal(loaded(x), ref)
    # original ESRGAN names
    old = {}
    top = {"conv_first": "model.0", "conv_body": "model.1.sub.2", "conv_up1": "model.3", "conv_up2": "model.6",
           "conv_hr": "model.8", "conv_last": "model.10"}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "body":
            old[f"model.1.sub.{parts[1]}.RDB{parts[2][-1]}.{parts[3]}.0.{parts[4]}"] = v
        else:
            old[f"{top[parts[0]]}.{parts[1]}"] = v
    assert convert_esrgan_state_dict(old).keys() == state.keys()
    esrgan = tmp_path / "RRDB_ESRGAN_x4.pth"
    torch.save(old, esrgan)
    with torch.no_grad():
        assert torch.equal(load_rrdb(esrgan)(x), ref)
    bad = tmp_path / "bad.pth"
    torch.save({"params": {"foo.weight": torch.zeros(1)}}, bad)
    with pytest.raises(CrdError, match="bad.pth"):
        load_rrdb(bad)


def test_sr_students_shapes_macs_and_arch_roundtrip(tmp_path):
    x = torch.rand(1, 3, 12, 20)
    s = build_generator(family_spec("sr_resnet", ngf=8, n_blocks=2))
    assert s(x).shape == (1, 3, 48, 80)
    arch = validate_sr_arch({"scale": 4, "num_feat": 8, "cells": [{"op": op, "width": w} for op, w in
                                                                   zip(SR_OPS, (8, 12, 12, 8, 16, 8))]})
    spec = sr_arch_spec(arch)
    net = build_generator(spec)
    assert net(x).shape == (1, 3, 48, 80)
    p = profile_spec(spec, 16)
    assert p.macs["exact"] == sr_arch_macs(arch, 16, 16)
    path = save_sr_arch(arch, tmp_path / "arch.json")
    assert profile_checkpoint(path, 16).macs["exact"] == p.macs["exact"]
    with pytest.raises(CrdError, match=r"cells\[0\]\.op"):
        validate_sr_arch({"scale": 4, "num_feat": 8, "cells": [{"op": "conv9x9", "width": 8}]})


@pytest.mark.skipif(not REAL_ESRGAN.is_file(), reason="shared weights absent")
def test_real_esrgan_file_loads_with_its_published_shape():
    model = load_rrdb(REAL_ESRGAN)
    assert sum(p.numel() for p in model.parameters()) == 16_697_987
    assert (model.spec.ngf, model.spec.n_blocks, model.spec.num_grow_ch, model.spec.scale) == (64, 23, 32, 4)


# ------------------------------------------------------------------------------------------ data / metrics


def test_imresize_matches_matlab_on_a_known_case():
    """A constant image stays constant; a ramp downscaled by 1/2 averages neighbours like MATLAB."""
    flat = np.full((8, 8, 3), 77, np.uint8)
    assert (imresize(flat, 0.25) == 77).all() and imresize(flat, 0.25).shape == (2, 2, 3)
    up = imresize(np.array([[0, 255]], np.uint8), 2.0)
    assert up.shape == (2, 4) and up[0, 0] == 0 and up[0, -1] == 255  # symmetric padding keeps the ends
    assert mod_crop(np.zeros((10, 13)), 4).shape == (8, 12)


def test_metrics_known_values():
    a = np.full((20, 20, 3), 100, np.uint8)
    b = a.copy()
    b[10, 10] = 110
    assert psnr_y(a, a, 4) == float("inf") and ssim_y(a, a, 4) == pytest.approx(1.0)
    dy = 10 * (65.481 + 128.553 + 24.966) / 255
    assert psnr_y(b, a, 4) == pytest.approx(10 * np.log10(255 ** 2 / (dy ** 2 / 144)))
    grey = np.full((20, 20), 100, np.uint8)
    assert psnr_y(a, grey, 2) == float("inf")  # an RGB output of a grey image is scored on the grey channel


def _sets():
    if not SR_DATA.is_dir():
        pytest.skip(f"SR data not present at {SR_DATA}")
    return SR_DATA


def test_bicubic_downscale_reproduces_committed_lr_files_bit_exactly():
    root = _sets()
    n = 0
    for name in ("Set5", "Set14"):
        for scale in (2, 3, 4):
            for f in sorted((root / name / "HR").glob("*.png")):
                lr = read_uint8(lr_file(root / name, f, scale), keep_grey=True)
                mine = bicubic_down(read_uint8(f, keep_grey=True), scale)
                assert mine.shape == lr.shape and np.array_equal(mine, lr), f"{name} x{scale} {f.name}"
                n += 1
    assert n == 3 * (5 + 14)


@pytest.mark.parametrize("name, published", [("Set5", 28.42), ("Set14", 26.00),
                                             pytest.param("B100", 25.96, marks=pytest.mark.slow)])
def test_bicubic_baselines(name, published):
    root = _sets()
    pairs = load_eval_set(root / name, 4)
    score = score_set([bicubic_upscale(p, 4) for p in pairs], [p.hr for p in pairs], [p.name for p in pairs], 4)
    assert abs(score.psnr - published) <= 0.02, score.psnr


def test_patches_are_aligned_and_keyed_by_step(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ds = SRPatches([tmp_path], scale=4, patch_size=16, seed=3)
    lr, hr, where = ds.batch(5, 3)
    assert lr.shape == (3, 3, 4, 4) and hr.shape == (3, 3, 16, 16)
    lr2, hr2, where2 = ds.batch(5, 3)
    assert where == where2 and torch.equal(lr, lr2)
    i, top, left, aug = where[0]
    full_hr, full_lr = ds.pair(i)
    assert np.array_equal(imresize(full_hr, 0.25), full_lr)
    with pytest.raises(CrdError, match="crop_size"):
        SRPatches([tmp_path], scale=4, patch_size=18)


# ------------------------------------------------------------------------------------------ distillation


def _tiny_sr_data(root: Path) -> None:
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("val", 2)):
        (root / split / "HR").mkdir(parents=True)
        for i in range(n):
            base = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(base).resize((34, 30), Image.BICUBIC))
            Image.fromarray(img).save(root / split / "HR" / f"{i}.png")


def _tiny_recipe(tmp_path: Path, teacher: Path | None, **over) -> Path:
    lines = ['name = "sr-tiny"', 'task = "sr"', f'output_dir = "{(tmp_path / "run").as_posix()}"', "[data]",
             'root = "data"', "scale = 4", 'train_sets = ["train"]', 'eval_sets = ["val"]', "crop_size = 16",
             "batch_size = 2", "eval_images = 2", "[teacher]", 'arch = "rrdb"']
    if teacher is not None:
        lines.append(f'checkpoint = "{teacher.as_posix()}"')
    lines += ["[student]", 'arch = "sr_resnet"', "ngf = 4", "n_blocks = 1", "[loss]",
              f'kd = "{"crd" if teacher else "none"}"', "patch_size = 8", "lambda_crd = 1.0",
              f"lambda_pixel = {1.0 if teacher else 0.0}", "[train]", "lr = 1e-3", "max_steps = 6", "eval_every = 3",
              "checkpoint_every = 3", "threads = 1", *(f"{k} = {v}" for k, v in over.items())]
    path = tmp_path / "sr.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("average", [{}, {"ema_decay": 0.5, "ema_start": 0.3}], ids=["last-weights", "ema"])
def test_sr_distill_with_cached_teacher_resumes_exactly(tmp_path, average):
    from crdtool.distill import run
    from crdtool.models.checkpoints import load_generator

    _tiny_sr_data(tmp_path / "data")
    teacher = tmp_path / "teacher.pth"
    torch.save({"params_ema": _tiny_rrdb().state_dict()}, teacher)
    recipe = _tiny_recipe(tmp_path, teacher, **average)
    result = run(recipe)
    assert result.steps == 6 and result.last_eval["step"] == 6
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert {"hr", "teacher", "crd"} <= set(train[-1])
    evals = [r for r in rows if r["kind"] == "eval"]
    assert "psnr_vs_teacher" in evals[-1] and "psnr_y" in evals[-1]
    assert list((tmp_path / "run" / "teacher_cache").rglob("*.npy"))  # outputs cached on disk
    full = load_generator(tmp_path / "run" / "student.safetensors").state_dict()
    if average:  # the student file is the average of steps 1..5 (int(0.3 * 6) = 1), the raw file the last weights
        raw = load_generator(tmp_path / "run" / "student-raw.safetensors").state_dict()
        assert any(not torch.equal(full[k], raw[k]) for k in full if full[k].is_floating_point())

    # the same run stopped at step 3 (a checkpoint, as after Ctrl-C) and resumed ends with the same weights
    import shutil

    from crdtool.recipe import load_recipe
    from crdtool.train.sr import SRTrainer

    shutil.rmtree(tmp_path / "run")
    t = SRTrainer(load_recipe(recipe))
    t.run_dir.mkdir(parents=True)
    t.total_steps = 3  # stop early with the 6-step schedule's learning rates
    t.lr_at = lambda step, _f=SRTrainer(load_recipe(recipe)).lr_at: _f(step)
    t.run()
    resumed = run(recipe, resume=True)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    again = load_generator(tmp_path / "run" / "student.safetensors").state_dict()
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_sr_distill_without_teacher_and_recipe_errors(tmp_path):
    from crdtool.distill import run

    _tiny_sr_data(tmp_path / "data")
    result = run(_tiny_recipe(tmp_path, None))
    assert result.steps == 6 and "psnr_vs_teacher" not in result.last_eval
    bad = _tiny_recipe(tmp_path, None)
    bad.write_text(bad.read_text().replace('kd = "none"', 'kd = "crd"'))
    with pytest.raises(CrdError, match="without teacher.checkpoint"):
        run(bad)


def test_sr_export_is_dynamic_and_bench_scores_it(tmp_path):
    """One ONNX graph serves two LR sizes (parity checked); bench --psnr scores it like PyTorch."""
    from crdtool.bench.sr import sr_latency, sr_quality
    from crdtool.deploy.sr import export_sr
    from crdtool.models.checkpoints import save_generator

    src = save_generator(build_generator(family_spec("sr_resnet", ngf=4, n_blocks=1)), tmp_path / "s.safetensors")
    manifest = json.loads(export_sr(src, tmp_path / "export").manifest.read_text())
    assert manifest["output"]["scale"] == 4 and manifest["input"]["dynamic"]
    assert [c["input"][2:] for c in manifest["verification"]["parity"]] == [[48, 64], [45, 80]]
    onnx_path = tmp_path / "export" / "s.onnx"
    _tiny_sr_data(tmp_path / "data")
    q_onnx = sr_quality(onnx_path, tmp_path / "data" / "val", 4)
    q_torch = sr_quality(src, tmp_path / "data" / "val", 4)
    assert q_onnx["psnr"] == pytest.approx(q_torch["psnr"], abs=1e-3) and q_onnx["images"] == 2
    rows = sr_latency(onnx_path, sizes=((9, 16),), runs=1, warmup=0)
    assert rows[0]["output"] == [36, 64]


def test_sr_search_respects_budget_and_its_arch_trains(tmp_path):
    """A tiny AGD SR search: the derived sr_arch.json fits the budget (exact MACs = profile) and distils."""
    from crdtool.search.sr_space import SRSearchConfig, SRSupernet, run_sr_search, smallest_macs

    _tiny_sr_data(tmp_path / "data")
    cfg = SRSearchConfig(data=tmp_path / "data", train_sets=["train", "val"], num_feat=8, cells=3, widths=(4, 8),
                         steps=4, batch_size=2, crop_size=16, size=16, budget=1_500_000, out_dir=tmp_path / "s")
    arch = run_sr_search(cfg)
    assert arch["meta"]["macs"] <= 1_500_000 == arch["meta"]["budget_macs"]
    assert profile_spec(sr_arch_spec(arch), 16).macs["exact"] == arch["meta"]["macs"]
    # the expected MACs of a one-hot supernet equal the derived network's exact count
    net = SRSupernet(cfg)
    with torch.no_grad():
        net.alpha.fill_(-1e4)
        net.beta.fill_(-1e4)
        net.alpha[:, SR_OPS.index("residual")] = 0
        net.beta[:, 1] = 0
    one_hot = {"scale": 4, "num_feat": 8, "cells": [{"op": "residual", "width": 8}] * 3}
    assert float(net.expected_macs().detach()) == pytest.approx(sr_arch_macs(one_hot, 16, 16))
    with pytest.raises(CrdError, match="fits"):
        net.derive(1000)
    # the cheapest member of the space: every cell a skip at the narrowest width (a 1x1 conv only at 8 -> 4)
    cheapest = {"scale": 4, "num_feat": 8, "cells": [{"op": "skip", "width": 4}] * 3}
    assert smallest_macs(cfg) == sr_arch_macs(cheapest, 16, 16)
    recipe = _tiny_recipe(tmp_path, None)
    recipe.write_text(recipe.read_text().replace('arch = "sr_resnet"', f'arch = "{(tmp_path / "s" / "sr_arch.json").as_posix()}"'))
    from crdtool.distill import run

    assert run(recipe).steps == 6


def _tiny_sr_search_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "sr-search.toml"
    path.write_text("\n".join([
        'name = "sr-search-tiny"', 'task = "sr"', f'output_dir = "{(tmp_path / "search").as_posix()}"', "[data]",
        'root = "data"', "scale = 4", 'train_sets = ["train", "val"]', "crop_size = 16", "batch_size = 2",
        "[search]", 'budget = "1.5M"', "size = 16", "num_feat = 8", "cells = 3", "widths = [4, 8]", "steps = 4",
        "threads = 1"]) + "\n")
    return path


def test_search_cli_runs_an_sr_recipe(tmp_path):
    """``crdtool search`` on a task = "sr" recipe runs the AGD SR search: sr_arch.json within the budget."""
    from typer.testing import CliRunner

    from crdtool.cli import app

    _tiny_sr_data(tmp_path / "data")
    recipe = _tiny_sr_search_recipe(tmp_path)
    res = CliRunner().invoke(app, ["search", str(recipe)])
    assert res.exit_code == 0, res.output
    arch = json.loads((tmp_path / "search" / "sr_arch.json").read_text())
    assert arch["meta"]["macs"] <= 1_500_000 and len(arch["cells"]) == 3
    assert profile_spec(sr_arch_spec(arch), 16).macs["exact"] == arch["meta"]["macs"]
    assert "within" in res.output and "cell 2" in res.output and "sr_arch.json" in res.output
    assert len((tmp_path / "search" / "search.jsonl").read_text().splitlines()) == 1  # the last of 4 steps
    assert 'task = "sr"' in (tmp_path / "search" / "search_recipe.toml").read_text()
    # --budget overrides the recipe's (the impossible one names the space); a used folder is refused
    res = CliRunner().invoke(app, ["search", str(recipe), "--budget", "1K", "--out", str(tmp_path / "s2")])
    assert res.exit_code == 1 and "no network in this space fits" in res.output
    res = CliRunner().invoke(app, ["search", str(recipe)])
    assert res.exit_code == 1 and "already holds an SR search" in res.output
    for args, msg in ((["--window", "0.1"], "--window does not apply"), (["--resume"], "cannot be resumed"),
                      (["--set", "search.widths=[0]"], "search.widths")):
        res = CliRunner().invoke(app, ["search", str(recipe), "--out", str(tmp_path / "s3"), *args])
        assert res.exit_code == 1 and msg in res.output, res.output


def test_repository_sr_search_recipe_parses():
    from crdtool.search.sr_recipe import load_sr_search_recipe

    root = Path(__file__).resolve().parents[1]
    cfg = load_sr_search_recipe(root / "recipes" / "sr-search-x4.toml").to_config()
    assert cfg.budget == pytest.approx(110.9e9) and cfg.size == 256 and cfg.scale == 4
    assert cfg.ops == SR_OPS and cfg.data == (root.parent / "shared" / "data" / "sr").resolve()


@pytest.mark.slow
def test_profile_cli_prints_rrdb_macs_exactly():
    """``crdtool profile --model rrdb --size 256 --convention agd``: 1174.85G (both conventions), AGD's 1176.61G."""
    from typer.testing import CliRunner

    from crdtool.cli import app

    out = CliRunner().invoke(app, ["profile", "--model", "rrdb", "--size", "256", "--convention", "agd"])
    assert out.exit_code == 0, out.output
    assert out.output.count("1174.85G") == 2 and "1176.61G" in out.output and "16.698M" in out.output


def test_sr_teacher_cache_off_runs_the_teacher_per_batch(tmp_path):
    from crdtool.distill import run

    _tiny_sr_data(tmp_path / "data")
    teacher = tmp_path / "teacher.pth"
    torch.save({"params": _tiny_rrdb().state_dict()}, teacher)
    result = run(_tiny_recipe(tmp_path, teacher), overrides={"train.teacher_cache": "off", "train.max_steps": 2})
    assert result.steps == 2 and "psnr_vs_teacher" in result.last_eval
    assert not (tmp_path / "run" / "teacher_cache").exists()
