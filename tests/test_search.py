"""crdtool search: operators vs fvcore, Gumbel widths, expected MACs, the budget controller, arch.json
round trips, supernet/derived equivalence, and a tiny end-to-end search with resume and the CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import crdtool.models.searched  # noqa: F401  registers the "searched" family
from crdtool.errors import CrdError
from crdtool.models import build_generator
from crdtool.models.checkpoints import load_generator, save_generator
from crdtool.models.searched import SearchedGenerator, arch_spec, load_arch, save_arch
from crdtool.search.space import (
    OPS,
    SearchSpace,
    arch_macs,
    head_layers,
    inherit_weights,
    make_op,
    op_macs,
    parse_macs,
    stem_layers,
)
from crdtool.search.supernet import BudgetController, Supernet, gumbel_hard, repair_to_window, space_extremes


def fvcore_conv_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    from fvcore.nn import FlopCountAnalysis

    f = FlopCountAnalysis(module, x)
    f.unsupported_ops_warnings(False)
    f.uncalled_modules_warnings(False)
    return int(f.by_operator().get("conv", 0))


TINY = SearchSpace(ngf=8, n_cells=3, ratios=(0.5, 1.0))


def tiny_arch(ops=("invres", "conv3x3", "resblock"), widths=(8, 16, 16, 32, 16, 32, 16, 8)) -> dict:
    return TINY.make_arch(list(widths), list(ops))


# ---------------------------------------------------------------- operators and MACs


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("c_in,c_out", [(16, 24), (24, 16), (16, 16)])
def test_operator_shapes_and_macs_agree_with_fvcore(op, c_in, c_out):
    m = make_op(op, c_in, c_out, expand=4).eval()
    x = torch.randn(1, c_in, 8, 8)
    assert m(x).shape == (1, c_out, 8, 8)
    assert fvcore_conv_macs(m, x) == op_macs(op, c_in, c_out, 8, 8, 4)


def test_stem_and_head_macs_agree_with_fvcore():
    from crdtool.search.space import head_macs, stem_macs

    stem = stem_layers(3, [8, 16, 24])
    x = torch.randn(1, 3, 32, 32)
    c_in = 3
    for i, (layer, c) in enumerate(zip(stem, [8, 16, 24])):
        assert fvcore_conv_macs(layer, x) == stem_macs(i, c_in, c, 32, 32)
        x, c_in = layer(x), c
    assert x.shape == (1, 24, 8, 8)
    ups, final = head_layers(24, [16, 8], 3)
    for i, (layer, c) in enumerate(zip(ups, [16, 8])):
        # fvcore counts a stride-2 ConvTranspose over its input grid; the literature over its output (4x)
        assert 4 * fvcore_conv_macs(layer, x) == head_macs(i, c_in, c, 32, 32)
        x, c_in = layer(x), c
    assert x.shape == (1, 8, 32, 32)
    assert fvcore_conv_macs(final, x) == head_macs(2, 8, 3, 32, 32)
    assert final(x).shape == (1, 3, 32, 32)


def test_lookup_table_matches_known_mobile_resnet_counts():
    """The formulas reproduce the published 1.408G of mobile_resnet ngf16 (same stem/head, sepconv body)."""
    stem = 65536 * 3 * 16 * 49 + 16384 * 16 * 32 * 9 + 4096 * 32 * 64 * 9
    head = 16384 * 64 * 32 * 9 + 65536 * 32 * 16 * 9 + 65536 * 16 * 3 * 49
    arch = {"input_nc": 3, "output_nc": 3, "stem": [16, 32, 64], "head": [32, 16], "cells": []}
    sepconv = 4096 * 64 * 9 + 4096 * 64 * 64
    assert arch_macs(arch, 256)["total"] == stem + head
    assert round((stem + head + 18 * sepconv) / 1e9, 3) == 1.408


def test_parse_macs():
    assert parse_macs("1.4G") == 1.4e9
    assert parse_macs("350M") == 350e6
    assert parse_macs("88e6") == 88e6
    assert parse_macs(5) == 5.0
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(CrdError, match="budget"):
            parse_macs(bad)


# ---------------------------------------------------------------- Gumbel widths, expected MACs


def test_gumbel_width_sampling_is_hard_and_differentiable():
    torch.manual_seed(0)
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
    counts = torch.zeros(4)
    for _ in range(4000):
        g = gumbel_hard(logits)
        assert sorted(g.detach().tolist()) == [0.0, 0.0, 0.0, 1.0]  # exactly one-hot forward
        counts += g.detach()
    # hard samples follow softmax(logits)
    assert torch.allclose(counts / 4000, F.softmax(logits.detach(), -1), atol=0.03)
    # the gradient flows (straight-through), and pushes towards the choice the loss likes
    logits.grad = None
    value = torch.tensor([0.0, 0.0, 0.0, 1.0])
    (gumbel_hard(logits) * value).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert logits.grad[3] > 0


def test_supernet_masks_select_exactly_one_width():
    net = Supernet(TINY)
    x = torch.randn(1, 3, 16, 16)
    torch.manual_seed(1)
    g = net.sample_widths()
    stem0 = net.stem[0](x, g[0] @ net.mask0)
    width = TINY.positions[0][int(g[0].argmax())]
    nonzero = (stem0.abs().sum((0, 2, 3)) > 0).nonzero().flatten().tolist()
    assert nonzero == list(range(width))


def test_expected_macs_is_the_exact_expectation_and_differentiable():
    torch.manual_seed(0)
    space = SearchSpace(ngf=8, n_cells=2, ratios=(0.5, 1.0), ops=("conv1x1", "invres"))
    net = Supernet(space)
    with torch.no_grad():
        net.op_logits.normal_()
        for p in net.width_logits:
            p.normal_()
    expected = net.expected_macs(net.mac_tables(32))
    pos = space.positions
    q = [F.softmax(p.detach().double(), -1) for p in net.width_logits]
    p_op = F.softmax(net.op_logits.detach().double(), -1)
    brute = 0.0
    for wi in itertools.product(*[range(len(c)) for c in pos]):
        pw = float(torch.prod(torch.stack([q[k][j] for k, j in enumerate(wi)])))
        for oi in itertools.product(range(2), repeat=2):
            po = float(p_op[0, oi[0]] * p_op[1, oi[1]])
            arch = space.make_arch([c[j] for c, j in zip(pos, wi)], [space.ops[j] for j in oi])
            brute += pw * po * arch_macs(arch, 32)["total"]
    assert expected.item() == pytest.approx(brute, rel=1e-9)
    expected.backward()
    # more width costs more MACs: raising the widest choice's logit raises the cost, the narrowest lowers it
    multi = [p for p, c in zip(net.width_logits, pos) if len(c) > 1]
    assert len(multi) >= 5
    for p in multi:
        assert p.grad[-1] > 0 > p.grad[0]


def test_budget_controller_moves_lambda_the_right_way():
    c = BudgetController(90.0, 100.0, lam=1.0)
    assert c.update(120.0) == 2.0  # above the window: doubled
    assert c.update(101.0) == 4.0
    assert c.update(95.0) == 4.0  # inside: unchanged
    assert c.update(50.0) == 2.0  # below: halved
    assert c.update(89.9) == 1.0
    assert c.inside(90.0) and c.inside(100.0) and not c.inside(100.1)
    for _ in range(40):
        c.update(10.0)
    assert c.lam == 2.0**-12  # bounded: a long stretch under the window is undone by a few doublings


def test_mac_penalty_alone_drives_the_argmax_network_down():
    """Architecture steps on lambda * E[MACs] only: expected and argmax MACs fall."""
    net = Supernet(TINY)
    tables = net.mac_tables(32)
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.05)
    first = net.expected_macs(tables).item()
    for _ in range(50):
        opt.zero_grad()
        (net.expected_macs(tables) / first).backward()
        opt.step()
    lo, _ = space_extremes(TINY, 32)
    assert net.expected_macs(tables).item() - lo < 0.5 * (first - lo)
    assert arch_macs(net.argmax_arch(), 32)["total"] == pytest.approx(lo, rel=0.05)


@pytest.mark.parametrize("start", [0, -1])  # all-narrowest (repair upwards) / all-widest (downwards)
def test_repair_lands_inside_the_window(start):
    net = Supernet(SearchSpace(ngf=16, n_cells=4))
    with torch.no_grad():
        for p in net.width_logits:
            p.zero_()[start] = 1.0
        net.op_logits.zero_()[:, net.space.ops.index("conv1x1" if start == 0 else "resblock")] = 1.0
    lo, hi = space_extremes(net.space, 64)
    assert arch_macs(net.argmax_arch(), 64)["total"] == (lo if start == 0 else hi)
    target = lo + 0.4 * (hi - lo)
    arch, moves = repair_to_window(net, 64, 0.9 * target, target)
    assert moves > 0
    assert 0.9 * target <= arch_macs(arch, 64)["total"] <= target


# ---------------------------------------------------------------- derived networks


def test_supernet_at_fixed_choices_equals_the_derived_network():
    torch.manual_seed(0)
    net = Supernet(TINY).eval()
    arch = tiny_arch()
    pos = TINY.positions
    widths = [*arch["stem"], *[c["width"] for c in arch["cells"]], *arch["head"]]
    onehots = [F.one_hot(torch.tensor(c.index(w)), len(c)).float() for c, w in zip(pos, widths)]
    with torch.no_grad():
        net.op_logits.fill_(float("-inf"))
        for i, c in enumerate(arch["cells"]):
            net.op_logits[i, TINY.ops.index(c["op"])] = 0.0
    derived = inherit_weights(net, SearchedGenerator(arch), net.derived_prefix_map(arch)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x, onehots=onehots), derived(x), atol=1e-5)


def test_arch_json_round_trip_profile_equals_lookup_table(tmp_path):
    from crdtool.profile import profile_model

    arch = tiny_arch(ops=("resblock", "invres", "conv1x1"), widths=(8, 16, 24, 16, 32, 24, 16, 8))
    path = save_arch(arch, tmp_path / "arch.json")
    assert json.loads(path.read_text())["version"] == 1
    spec = load_arch(path)
    assert spec.name == "searched" and spec.arch["cells"][1] == {"op": "invres", "width": 32}
    model = build_generator(spec)
    for size in (32, 64):
        prof = profile_model(model, (1, 3, size, size))
        table = arch_macs(spec.arch, size)["total"]
        assert abs(prof.total("literature") - table) <= 0.02 * table
        assert prof.total("literature") == table  # InstanceNorm without affine costs 0: exact agreement
    # `crdtool profile arch.json` builds the same network
    from typer.testing import CliRunner

    from crdtool.cli import app

    out = CliRunner().invoke(app, ["profile", str(path), "--size", "64", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["macs"]["literature"] == arch_macs(spec.arch, 64)["total"]


def test_searched_generator_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model = build_generator(arch_spec(tiny_arch()))
    save_generator(model, tmp_path / "g.safetensors")
    loaded = load_generator(tmp_path / "g.safetensors")
    assert loaded.spec == model.spec
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("edit,field", [
    (lambda a: a["cells"][1].update(op="conv5x5"), "cells[1].op"),
    (lambda a: a["cells"][0].update(width=0), "cells[0].width"),
    (lambda a: a.pop("version"), "version"),
    (lambda a: a.update(stem=[8, 8]), "stem"),
    (lambda a: a.update(colour="red"), "colour"),
])
def test_load_arch_names_the_bad_field(tmp_path, edit, field):
    arch = tiny_arch()
    edit(arch)
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(CrdError) as e:
        load_arch(tmp_path / "arch.json")
    assert field in str(e.value) and "\n" not in str(e.value)


def test_load_arch_bad_json_and_missing(tmp_path):
    (tmp_path / "arch.json").write_text("{not json")
    with pytest.raises(CrdError, match="not valid JSON"):
        load_arch(tmp_path / "arch.json")
    with pytest.raises(CrdError, match="not found"):
        load_arch(tmp_path / "nope.json")


# ---------------------------------------------------------------- end to end


def write_recipe(tmp_path: Path, steps: int = 2, budget: str | None = None) -> Path:
    space = SearchSpace(ngf=8, n_cells=2, ratios=(0.5, 1.0))
    lo, hi = space_extremes(space, 32)
    budget = budget or str(int(lo + 0.5 * (hi - lo)))
    text = f"""
name = "tiny-search"
output_dir = "{tmp_path / 'run'}"
[data]
root = "{tmp_path / 'data'}"
load_size = 36
crop_size = 32
batch_size = 2
synth = {{ kind = "unpaired", size = 32, count = 8, seed = 0 }}
[teacher]
arch = "resnet"
ngf = 4
n_blocks = 1
[search]
ngf = 8
cells = 2
width_ratios = [0.5, 1.0]
steps = {steps}
pretrain_steps = 1
arch_lr = 0.05
control_every = 1
checkpoint_every = 2
log_every = 1
budget = "{budget}"
allow_random_teacher = true
"""
    path = tmp_path / "search.toml"
    path.write_text(text)
    return path


def test_run_search_end_to_end_and_resume(tmp_path):
    from crdtool.search import run_search

    recipe = write_recipe(tmp_path)
    events = []
    r = run_search(recipe, on_progress=events.append)
    assert r.inside and r.budget_min <= r.macs <= r.budget_max
    assert any("RANDOMLY INITIALISED" in w for w in r.warnings)
    assert events[0]["event"] == "start" and events[-1]["step"] == 3
    assert {"loss", "expected_macs", "argmax_macs", "arch"} <= set(events[-1])
    spec = load_arch(r.arch_path)
    assert arch_macs(spec.arch, 32)["total"] == r.macs
    model = load_generator(r.run_dir)  # generator.safetensors: the derived net with inherited weights
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    rows = [json.loads(ln) for ln in r.log_path.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    # a second run into the same folder is refused; --resume continues from the last checkpoint
    with pytest.raises(CrdError, match="--resume"):
        run_search(recipe)
    r2 = run_search(recipe, resume=True, overrides={"search.steps": 3})
    assert r2.steps == 4 and r2.inside
    rows = [json.loads(ln) for ln in r2.log_path.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]


def _searcher(tmp_path):
    from crdtool.search.search import Searcher, load_search_recipe

    searcher = Searcher(load_search_recipe(write_recipe(tmp_path)))
    searcher._setup()
    return searcher


def test_weight_steps_follow_agd_sandwich_rule(tmp_path, monkeypatch):
    searcher = _searcher(tmp_path)
    seen = []
    forward = Supernet.forward

    def spy(self, x, tau=1.0, onehots=None):
        seen.append(None if onehots is None else [int(g.argmax()) for g in onehots])
        return forward(self, x, tau, onehots)

    monkeypatch.setattr(Supernet, "forward", spy)
    choices = [len(c) for c in searcher.space.positions]
    widest, narrowest = [k - 1 for k in choices], [0] * len(choices)
    searcher._weight_step(pretrain=True)  # widest, narrowest, two random draws
    assert len(seen) == 4 and seen[:2] == [widest, narrowest]
    seen.clear()
    searcher._weight_step(pretrain=False)  # the Gumbel sample, widest, narrowest
    assert len(seen) == 3 and seen[1:] == [widest, narrowest]


def test_sandwich_trains_the_widest_channels_even_when_the_logits_pick_the_narrowest(tmp_path):
    searcher = _searcher(tmp_path)
    with torch.no_grad():
        for p in searcher.supernet.width_logits:
            p.copy_(torch.tensor([50.0] + [-50.0] * (p.numel() - 1)))  # Gumbel samples: always narrowest
    assert len(searcher.space.positions[2]) > 1
    last_filter = searcher.supernet.stem[2].conv.weight[-1]  # used only by the widest width of stem 2
    before = last_filter.detach().clone()
    searcher._weight_step(pretrain=False)
    assert not torch.equal(before, last_filter.detach())


def test_search_rejects_impossible_budget_and_bad_recipe(tmp_path):
    from crdtool.search import run_search

    with pytest.raises(CrdError, match="outside what this search space"):
        run_search(write_recipe(tmp_path, budget="1K"))
    bad = tmp_path / "bad.toml"
    bad.write_text(write_recipe(tmp_path).read_text().replace("cells = 2", "cellz = 2"))
    with pytest.raises(CrdError, match="search.cellz"):
        run_search(bad)


def test_search_cli(tmp_path):
    from typer.testing import CliRunner

    from crdtool.cli import app

    recipe = write_recipe(tmp_path, steps=1)
    res = CliRunner().invoke(app, ["search", str(recipe), "--out", str(tmp_path / "cli-run")])
    assert res.exit_code == 0, res.output
    assert "inside" in res.output and (tmp_path / "cli-run" / "arch.json").is_file()
    res = CliRunner().invoke(app, ["search", str(recipe), "--budget", "lots"])
    assert res.exit_code == 1 and "not a MAC count" in res.output


def test_search_loss_with_and_without_vgg(tmp_path):
    from safetensors.torch import save_file

    from crdtool.losses import VGG16Features
    from crdtool.search.search import SearchLoss, SearchLossSection

    s = torch.tanh(torch.randn(1, 3, 32, 32)).requires_grad_(True)
    t = torch.tanh(torch.randn(1, 3, 32, 32))
    raw = SearchLoss(SearchLossSection())
    terms = raw(s, t)
    assert set(terms) == {"l1", "style"} and "raw outputs" in raw.description
    assert float(raw(t, t)["l1"]) == 0.0 and float(raw(t, t)["style"]) == 0.0
    torch.manual_seed(0)
    vgg = VGG16Features()
    save_file({k: v.contiguous() for k, v in vgg.state_dict().items()}, str(tmp_path / "vgg.safetensors"))
    loss = SearchLoss(SearchLossSection(vgg_weights=tmp_path / "vgg.safetensors"))
    terms = loss(s, t)
    assert set(terms) == {"l1", "style", "content"} and "VGG" in loss.description
    sum(terms.values()).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
