"""Foreign generator checkpoints (official, vintagify, GAN Compression / OMGD / CRD code) and the
affine / residual generator options."""

from __future__ import annotations

import re

import pytest
import torch

from crdtool.errors import CrdError
from crdtool.models import GeneratorSpec, build_generator
from crdtool.models.checkpoints import detect_layout, load_generator, save_generator


def _tiny(affine: bool = False, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    g = build_generator(GeneratorSpec("resnet", ngf=4, n_blocks=2, affine=affine, dropout=dropout))
    with torch.no_grad():  # non-trivial affine parameters, so a mix-up of norm weights would show
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return g.eval()


def _vintagify_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(".conv_block.", ".block."): v for k, v in state.items()}


def _dropout_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """crdtool's dropout-free block (second conv at 5, norm at 6) as the reference code's block with a
    Dropout at 4 (second conv at 6, norm at 7)."""
    return {re.sub(r"\.conv_block\.([56])\.", lambda m: f".conv_block.{int(m.group(1)) + 1}.", k): v
            for k, v in state.items()}


@pytest.mark.parametrize("layout, affine, rename, source", [
    ("official", False, lambda s: s, "official pytorch-CycleGAN-and-pix2pix layout"),
    ("vintagify", True, _vintagify_keys, "vintagify layout"),
    ("dropout", False, _dropout_keys, "GAN Compression / OMGD / CRD-code layout"),
    ("dropout_affine", True, _dropout_keys, "GAN Compression / OMGD / CRD-code layout"),
])
def test_foreign_layouts_detected_and_load_to_same_outputs(tmp_path, layout, affine, rename, source):
    ref = _tiny(affine)
    state = rename(ref.state_dict())
    assert (set(state) != set(ref.state_dict())) == (layout != "official")
    torch.save(state, tmp_path / "g.pth")
    found = detect_layout(state)
    assert found.source == source and found.spec.affine == affine and found.spec.n_blocks == 2
    g = load_generator(tmp_path / "g.pth")
    assert g.spec == ref.spec and g.checkpoint_layout.startswith(source)
    assert f"resnet_2blocks, ngf 4, {'affine ' if affine else ''}InstanceNorm" in g.checkpoint_layout
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), ref(x))


def test_dropout_layout_matches_a_dropout_block_network(tmp_path):
    """The reference code's block really has its second conv at index 6: a crdtool network built with
    dropout has exactly those keys, and loads into the dropout-free crdtool network."""
    ref = _tiny(dropout=0.5)
    assert "model.10.conv_block.6.weight" in ref.state_dict() and "model.10.conv_block.5.weight" not in ref.state_dict()
    torch.save(ref.state_dict(), tmp_path / "g.pth")
    g = load_generator(tmp_path / "g.pth")
    assert g.spec.dropout == 0.0
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), ref(x))


def test_vintagify_description_as_printed():
    state = _vintagify_keys(build_generator(GeneratorSpec("resnet", ngf=8, affine=True)).state_dict())
    assert detect_layout(state).describe() == "vintagify layout (resnet_9blocks, ngf 8, affine InstanceNorm)"


def test_unknown_layout_is_one_line_naming_file_and_key(tmp_path):
    state = _tiny().state_dict()
    state["model.10.extra_branch.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CrdError) as e:
        load_generator(tmp_path / "odd.pth")
    msg = str(e.value)
    assert "\n" not in msg and "odd.pth" in msg and "'model.10.extra_branch.weight'" in msg and "unknown" in msg

    torch.save({"encoder.conv.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CrdError, match=r"other\.pth: unknown generator checkpoint layout: first key 'encoder\.conv"):
        load_generator(tmp_path / "other.pth")


@pytest.mark.parametrize("name", ["resnet", "mobile_resnet"])
def test_affine_residual_round_trip_through_safetensors(tmp_path, name):
    g = build_generator(GeneratorSpec(name, ngf=4, n_blocks=2, affine=True, residual=True))
    assert any(isinstance(m, torch.nn.InstanceNorm2d) and m.affine for m in g.modules())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), x)  # zero head: an untrained residual generator is the identity
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_generator(g, tmp_path / "g.safetensors")
    g2 = load_generator(tmp_path / "g.safetensors")
    assert g2.spec.affine and g2.spec.residual and g2.spec == g.spec
    with torch.no_grad():
        y = g2(x)
        assert torch.equal(y, g.eval()(x)) and y.abs().max() <= 1.0


def test_old_spec_without_the_new_fields_still_loads_and_plain_specs_do_not_write_them():
    old = {"name": "resnet", "ngf": 4, "input_nc": 3, "output_nc": 3, "norm": "instance", "n_blocks": 2,
           "num_downs": 8, "dropout": 0.0, "arch": None}
    spec = GeneratorSpec.from_dict(old)
    assert not spec.affine and not spec.residual
    assert spec.to_dict() == old


def test_unsupported_options_are_one_line_errors():
    with pytest.raises(CrdError, match="'unet' does not support residual"):
        GeneratorSpec("unet", residual=True).resolved()
    with pytest.raises(CrdError, match="affine = true needs norm 'instance'"):
        GeneratorSpec("resnet", norm="batch", affine=True).resolved()


@pytest.mark.slow  # the dynamo ONNX exporter takes ~25 s even for a tiny network
def test_residual_generator_exports_to_onnx_with_clip(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from crdtool.deploy.onnx import export_onnx, verify_onnx

    g = build_generator(GeneratorSpec("mobile_resnet", ngf=4, n_blocks=1, affine=True, residual=True))
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = export_onnx(g, tmp_path / "g.onnx", (1, 3, 16, 16))
    assert "Clip" in {n.op_type for n in onnx.load(str(path)).graph.node}
    parity = verify_onnx(g, path, torch.rand(2, 3, 16, 16) * 2 - 1)
    assert parity.max_abs < 1e-4


def test_real_vintagify_teacher_when_cached():
    from crdtool import weights

    path = weights.cached_path("vintagify")
    if path is None:
        pytest.skip("vintagify weights not in the cache (crdtool weights get vintagify)")
    g = load_generator(path)
    assert sum(p.numel() for p in g.parameters()) == 11_388_675
    convs = [m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert sum(m.weight.numel() + m.bias.numel() for m in convs) == 11_378_179
    assert g.spec.affine and g.spec.n_blocks == 9 and g.spec.ngf == 64


def test_recipe_student_residual_and_affine(tmp_path):
    from tests.helpers import tiny_recipe

    r = tiny_recipe(tmp_path, student={"arch": "mobile_resnet", "ngf": 2, "n_blocks": 2, "residual": True,
                                       "affine": True})
    spec = r.student.spec()
    assert spec.residual and spec.affine and spec.name == "mobile_resnet"
    assert not r.teacher.spec().residual
    with pytest.raises(CrdError, match="does not support residual"):
        tiny_recipe(tmp_path, student={"arch": "unet", "ngf": 2, "residual": True}).student.spec()


def test_profile_cli_names_the_detected_layout(tmp_path):
    from typer.testing import CliRunner

    from crdtool.cli import app

    state = _vintagify_keys(_tiny(affine=True).state_dict())
    torch.save(state, tmp_path / "G_A2B.pth")
    out = CliRunner().invoke(app, ["profile", str(tmp_path / "G_A2B.pth"), "--size", "16"])
    assert out.exit_code == 0, out.output
    assert "checkpoint: vintagify layout (resnet_2blocks, ngf 4, affine InstanceNorm)" in out.output
    assert "resnet ngf4 affine" in out.output
