"""crdtool profile: the literature numbers, the exact convention, fvcore vs torch's FlopCounterMode, the CLI."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
import torch.nn as nn
import typer
from rich.console import Console
from typer.testing import CliRunner

from crdtool.commands.profile import profile as profile_command
from crdtool.commands.profile import render_comparison
from crdtool.errors import CrdError
from crdtool.models import GeneratorSpec, build_discriminator, build_generator, list_generators
from crdtool.models.checkpoints import save_generator
from crdtool.profile import (
    CONVENTIONS,
    compare,
    compare_specs,
    format_macs,
    format_params,
    profile_model,
    profile_spec,
)

runner = CliRunner()

# (spec, literature MACs, params) at 1x3x256x256: the numbers papers print (torchprofile).
LITERATURE = {
    "resnet ngf64": (GeneratorSpec("resnet", 64), 56_799_264_768, "56.80G", 11_378_179, "11.378M"),
    "mobile_resnet ngf16": (GeneratorSpec("mobile_resnet", 16), 1_407_713_280, "1.408G", 137_347, "0.137M"),
    "unet ngf16": (GeneratorSpec("unet", 16), 1_219_449_856, "1.219G", 3_404_451, "3.404M"),
    "mobile_resnet ngf64": (GeneratorSpec("mobile_resnet", 64), 18_314_428_416, "18.31G", 1_987_075, "1.987M"),
}

# Small configurations of every family, for the fvcore vs FlopCounterMode cross-check.
SMALL = {
    "resnet": (GeneratorSpec("resnet", 8, n_blocks=2), 32),
    "mobile_resnet": (GeneratorSpec("mobile_resnet", 8, n_blocks=2), 32),
    "unet": (GeneratorSpec("unet", 8, num_downs=5), 32),
    "searched": (GeneratorSpec("searched", arch={
        "format": "crdtool.arch", "version": 1, "input_nc": 3, "output_nc": 3, "norm": "instance", "expand": 4,
        "stem": [8, 16, 24], "head": [16, 8],
        "cells": [{"op": "invres", "width": 16}, {"op": "resblock", "width": 32},
                  {"op": "conv3x3", "width": 16}, {"op": "conv1x1", "width": 24}]}), 32),
    "rrdb": (GeneratorSpec("rrdb", 8, n_blocks=2, scale=4, num_grow_ch=4), 16),
    "sr_resnet": (GeneratorSpec("sr_resnet", 8, n_blocks=2, scale=4), 16),
    "sr_searched": (GeneratorSpec("sr_searched", 8, scale=4, arch={
        "format": "crdtool.sr_arch", "version": 1, "scale": 4, "num_feat": 8,
        "cells": [{"op": "dwsblock", "width": 12}, {"op": "conv3x3_d2", "width": 8}, {"op": "skip", "width": 16}]}), 16),
}


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("profile")(profile_command)
    app.command("version")(lambda: None)  # a second command keeps "profile" a subcommand
    return app


def _cli(*args: str):
    return runner.invoke(_app(), ["profile", *args])


@pytest.fixture(scope="module")
def at256() -> dict:
    """The h2z pair and the unet (stride 256) at 256; mobile_resnet ngf64 at 64, scaled (MACs are linear in pixels)."""
    out = {key: profile_spec(spec, 256) for key, (spec, *_) in LITERATURE.items() if key != "mobile_resnet ngf64"}
    small = profile_spec(LITERATURE["mobile_resnet ngf64"][0], 64)
    out["mobile_resnet ngf64"] = dataclasses.replace(
        small, input_shape=(1, 3, 256, 256), macs={c: 16 * v for c, v in small.macs.items()},
        rows=tuple(dataclasses.replace(r, macs={c: 16 * v for c, v in r.macs.items()}) for r in small.rows))
    return out


@pytest.mark.parametrize("key", list(LITERATURE))
def test_literature_numbers_at_256(at256, key):
    _, macs, macs_text, params, params_text = LITERATURE[key]
    p = at256[key]
    assert p.macs["literature"] == macs
    assert format_macs(p.macs["literature"]) == macs_text
    assert p.params == params
    assert format_params(p.params) == params_text
    assert p.input_shape == (1, 3, 256, 256)


def test_exact_convention_original_cyclegan(at256):
    p = at256["resnet ngf64"]
    assert p.macs["exact"] == 49_551_507_456
    assert format_macs(p.macs["exact"]) == "49.55G"
    # the conventions differ only in ConvTranspose: the stride-2 output grid is 4x the input grid
    assert p.by_op["literature"]["conv"] == p.by_op["exact"]["conv"]
    assert p.by_op["literature"]["conv_transpose"] == 4 * p.by_op["exact"]["conv_transpose"]
    assert "norm" not in p.by_op["literature"]  # InstanceNorm without affine counts 0
    # the pix2pix student: affine BatchNorm is one MAC per element in the literature convention
    u = at256["unet ngf16"]
    assert u.by_op["literature"]["norm"] == 742_400
    assert u.macs["exact"] == u.by_op["exact"]["conv"] + u.by_op["exact"]["conv_transpose"]


@pytest.mark.parametrize("key", list(LITERATURE))
def test_rows_sum_to_totals(at256, key):
    p = at256[key]
    for c in CONVENTIONS:
        assert sum(r.macs[c] for r in p.rows) == p.macs[c]
        assert sum(p.share(r, c) for r in p.rows) == pytest.approx(1.0)
    assert sum(r.params for r in p.rows) == p.params
    assert not p.unsupported_ops


def test_rows_have_shapes_and_top_is_heaviest(at256):
    p = at256["resnet ngf64"]
    top = p.top(3)
    assert [r.path for r in top[:2]] == ["model.19", "model.22"]
    assert top[0].op == "ConvTranspose2d"
    assert top[0].input_shape == (1, 256, 64, 64) and top[0].output_shape == (1, 128, 128, 128)
    assert top[0].macs == {"literature": 4_831_838_208, "exact": 1_207_959_552}
    assert top[0].params == 256 * 128 * 9 + 128
    assert p.top(3, "exact")[0].op == "Conv2d"  # exact: the 3x3 block convs outweigh the ConvTransposes
    assert all(a.macs["literature"] >= b.macs["literature"] for a, b in zip(top, top[1:]))


def test_macs_scale_with_pixels(at256):
    small, big = (profile_spec(GeneratorSpec("mobile_resnet", 16), s) for s in (32, 64))
    for c in CONVENTIONS:
        assert big.macs[c] == 4 * small.macs[c]
        assert 16 * big.macs[c] == at256["mobile_resnet ngf16"].macs[c]


def test_every_family_has_a_cross_check_config():
    missing = set(list_generators()) - set(SMALL)
    if missing:  # a new family (e.g. "searched") needs an entry in SMALL to be cross-checked
        pytest.fail(f"add a small config for {sorted(missing)} to SMALL in tests/test_profile.py")


@pytest.mark.parametrize("family", list(SMALL))
def test_fvcore_matches_torch_flop_counter(family):
    """fvcore relies on TorchScript tracing (deprecated upstream); torch's FlopCounterMode does not."""
    from torch.utils.flop_counter import FlopCounterMode

    spec, size = SMALL[family]
    model = build_generator(spec).eval()
    p = profile_model(model, (1, spec.input_nc, size, size))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, spec.input_nc, size, size))
    flops = counter.get_total_flops()
    assert flops > 0
    assert 2 * p.macs["exact"] == flops  # FlopCounterMode: FLOPs = 2 x MACs, ConvTranspose over its input
    conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "conv" in str(k))
    assert 2 * (p.by_op["exact"]["conv"] + p.by_op["exact"].get("conv_transpose", 0)) == conv_flops


def test_profile_restores_training_mode_and_is_quiet(caplog):
    model = build_generator("unet", 8, num_downs=5)  # batch norm on a 1x1 map: only works in eval
    assert model.training
    with caplog.at_level(logging.WARNING):
        profile_model(model, (1, 3, 32, 32))
    assert model.training
    assert not [r for r in caplog.records if r.name.startswith("fvcore")]


class _Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.exp(torch.exp(self.conv(x)))


def test_unsupported_ops_listed_once(caplog):
    with caplog.at_level(logging.WARNING):
        p = profile_model(_Odd(), (1, 3, 8, 8))
    assert p.unsupported_ops == {"aten::exp": 2}
    assert p.macs["exact"] == 8 * 8 * 4 * 3 * 9
    assert not [r for r in caplog.records if "exp" in r.getMessage()]


class _Head(nn.Module):
    """Linear algebra beside convs: a searched or future family may use them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1, groups=1)
        self.fc = nn.Linear(16, 8)
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x):
        y = self.norm(self.conv(x))
        return torch.matmul(self.fc(y.flatten(2)), torch.ones(8, 5))


def test_linear_algebra_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model, x = _Head(), torch.randn(2, 3, 2, 2)
    p = profile_model(model, tuple(x.shape))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    assert 2 * p.macs["exact"] == counter.get_total_flops()
    assert p.by_op["exact"]["linear"] == 2 * 4 * 16 * 8 and p.by_op["exact"]["matmul"] == 2 * 4 * 8 * 5
    assert p.by_op["literature"]["norm"] == 2 * 4 * 4 * 4  # affine GroupNorm: one per output element
    assert p.by_op["literature"]["conv_transpose"] == 4 * p.by_op["exact"]["conv_transpose"]
    assert not p.unsupported_ops


def test_wrong_size_is_one_line_error():
    with pytest.raises(CrdError, match="stride 4"):
        profile_spec(GeneratorSpec("resnet", 8), 30)
    with pytest.raises(CrdError, match="stride 256"):
        profile_spec(GeneratorSpec("unet", 8), 128)
    result = _cli("--model", "mobile_resnet", "--ngf", "8", "--size", "250")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "250" in lines[0] and "stride 4" in lines[0]


def test_non_generator_checkpoint_is_one_line_error(tmp_path):
    disc = tmp_path / "latest_net_D.pth"
    torch.save(build_discriminator(ndf=8).state_dict(), disc)
    junk = tmp_path / "notes.safetensors"
    junk.write_text("not a tensor file")
    for path in (disc, junk, tmp_path / "missing.safetensors"):
        result = _cli(str(path))
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert result.output.startswith("error: ")


def test_checkpoint_json(tmp_path):
    path = save_generator(build_generator("mobile_resnet", 8, n_blocks=3), tmp_path / "student.safetensors")
    result = _cli(str(path), "--size", "64", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # stderr names the checkpoint layout
    assert doc["format"] == "crdtool.profile" and doc["version"] == 1 and doc["kind"] == "model"
    expected = profile_spec(GeneratorSpec("mobile_resnet", 8, n_blocks=3), 64)
    assert doc["macs"] == expected.macs and doc["params"] == expected.params
    assert doc["input_shape"] == [1, 3, 64, 64]
    assert sum(r["macs"]["literature"] for r in doc["rows"]) == expected.macs["literature"]
    assert {"path", "op", "input_shape", "output_shape", "macs", "params", "share"} <= set(doc["rows"][0])
    # the run folder resolves to its student
    again = json.loads(_cli(str(tmp_path), "--size", "64", "--json").stdout)
    assert again["macs"] == doc["macs"]


def test_model_option_human_output_with_top():
    result = _cli("--model", "mobile_resnet", "--ngf", "16", "--size", "64", "--top", "2")
    assert result.exit_code == 0, result.output
    assert "87.98M" in result.output  # 1.408G / 16
    assert "0.137M" in result.output and "ConvTranspose2d" in result.output.replace("\n", "")
    assert _cli("--model", "nope").exit_code == 1
    assert _cli("--model", "resnet", "--convention", "flops").exit_code == 1
    assert _cli().exit_code == 1


def test_piped_output_keeps_one_line_per_table_row(monkeypatch):
    # no terminal (a pipe, a CI log): rich's 80-column default would fold the wide per-layer table
    monkeypatch.delenv("COLUMNS", raising=False)
    result = _cli("--model", "resnet", "--ngf", "64", "--size", "256", "--top", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("model.19" in line and "ConvTranspose2d" in line and "4.832G" in line for line in lines), result.output
    assert any("model.10.conv_block.1" in line and "2.416G" in line for line in lines), result.output


def test_h2z_comparison_at_256(at256):
    comparison = compare(at256["resnet ngf64"], at256["mobile_resnet ngf16"], name="h2z")
    assert comparison.mac_ratio() == pytest.approx(40.35, abs=0.01)
    assert comparison.param_ratio == pytest.approx(82.84, abs=0.01)
    console = Console(record=True, width=140)
    render_comparison(console, comparison, top=2)
    text = console.export_text()
    for expected in ("56.80G", "11.378M", "1.408G", "0.137M", "40.3x", "82.8x", "49.55G", "954.7M", "model.19"):
        assert expected in text, expected


def test_recipe_teacher_vs_student(tmp_path):
    recipe = tmp_path / "h2z.toml"
    recipe.write_text('name = "h2z"\n[data]\nroot = "data"\n[teacher]\narch = "resnet"\nngf = 64\n'
                      '[student]\narch = "mobile_resnet"\nngf = 16\n')
    result = _cli(str(recipe), "--size", "32", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["kind"] == "comparison" and doc["name"] == "h2z"
    assert doc["teacher"]["input_shape"] == [1, 3, 32, 32]
    assert doc["teacher"]["macs"]["literature"] * 64 == LITERATURE["resnet ngf64"][1]
    assert doc["student"]["macs"]["literature"] * 64 == LITERATURE["mobile_resnet ngf16"][1]
    assert doc["ratios"]["params"] == pytest.approx(11_378_179 / 137_347)
    human = runner.invoke(_app(), ["profile", str(recipe), "--size", "32"], terminal_width=140)
    assert human.exit_code == 0 and "teacher (resnet ngf64)" in human.output and "82.8x" in human.output
    assert _cli(str(recipe), "--size", "66").exit_code == 1


def test_render_comparison_for_quickstart():
    comparison = compare_specs(GeneratorSpec("resnet", 16, n_blocks=3), GeneratorSpec("mobile_resnet", 8, n_blocks=3),
                               64, name="quickstart")
    console = Console(record=True, width=120)
    render_comparison(console, comparison)
    text = console.export_text()
    assert "quickstart" in text and "teacher" in text and "student" in text
    assert f"{comparison.mac_ratio():.1f}x" in text and f"{comparison.param_ratio:.1f}x" in text
    assert comparison.mac_ratio() > 1 and comparison.mac_ratio("exact") > 1 and comparison.param_ratio > 1


def test_formatting():
    assert format_macs(56_799_264_768) == "56.80G"
    assert format_macs(1_407_713_280) == "1.408G"
    assert format_macs(18_314_428_416) == "18.31G"
    assert format_macs(954_728_448) == "954.7M"
    assert format_macs(9_999_600_000) == "10.00G"
    assert format_macs(512) == "512"
    assert format_params(11_378_179) == "11.378M" and format_params(137_347) == "0.137M"
    assert format_params(2_368) == "2.368K" and format_params(7) == "7"
