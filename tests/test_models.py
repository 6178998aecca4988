import pytest
import torch

from crdtool.errors import CrdError
from crdtool.models import GeneratorSpec, build_discriminator, build_generator, generator_stride
from crdtool.models.checkpoints import load_generator, save_generator


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,ngf,expected", [
    ("resnet", 64, 11_378_179),
    ("mobile_resnet", 16, 137_347),
    ("mobile_resnet", 64, 1_987_075),
    ("unet", 64, 54_413_955),
    ("unet", 16, 3_404_451),
])
def test_exact_parameter_counts(name, ngf, expected):
    assert n_params(build_generator(name, ngf)) == expected


@pytest.mark.parametrize("name,size", [("resnet", 32), ("mobile_resnet", 36), ("unet", 256)])
def test_shapes_and_range(name, size):
    g = build_generator(name, 4).eval()
    y = g(torch.randn(2, 3, size, size))
    assert y.shape == (2, 3, size, size)
    assert y.abs().max() <= 1


def test_patchgan_output_grid():
    assert build_discriminator(3, 8)(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert build_discriminator(6, 8, norm="batch")(torch.randn(2, 6, 64, 64)).shape == (2, 1, 6, 6)


def test_official_resnet_key_layout_loads(tmp_path):
    ref = build_generator("resnet", 64)
    keys = set(ref.state_dict())
    for k in ("model.1.weight", "model.1.bias", "model.4.weight", "model.10.conv_block.1.weight",
              "model.10.conv_block.5.bias", "model.18.conv_block.5.weight", "model.19.weight", "model.22.bias",
              "model.26.weight", "model.26.bias"):
        assert k in keys
    # Build an "official" state dict by hand, including the obsolete InstanceNorm running stats old files carry.
    state = {k: torch.randn_like(v) for k, v in build_generator("resnet", 8).state_dict().items()}
    state["model.2.running_mean"] = torch.zeros(8)
    state["model.2.running_var"] = torch.ones(8)
    state["model.10.conv_block.2.running_mean"] = torch.zeros(32)
    torch.save(state, tmp_path / "latest_net_G.pth")
    g = load_generator(tmp_path / "latest_net_G.pth")
    assert g.spec.name == "resnet" and g.spec.ngf == 8 and g.spec.n_blocks == 9
    assert torch.equal(g.state_dict()["model.26.bias"], state["model.26.bias"])


def test_official_unet_nested_keys_load(tmp_path):
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in build_generator("unet", 4).state_dict().items()}
    assert "model.model.1.model.1.weight" in state
    assert any(k.startswith("model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.1") for k in state)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1 files lack these
    torch.save(old, tmp_path / "latest_net_G.pth")
    g = load_generator(tmp_path / "latest_net_G.pth")
    assert g.spec.name == "unet" and g.spec.ngf == 4 and g.spec.num_downs == 8 and g.spec.norm == "batch"
    state7 = build_generator("unet", 4, num_downs=7).state_dict()
    torch.save(state7, tmp_path / "u7.pth")
    assert load_generator(tmp_path / "u7.pth").spec.num_downs == 7


def test_mismatched_checkpoint_is_one_line_naming_key(tmp_path):
    torch.save(build_generator("resnet", 8).state_dict(), tmp_path / "g.pth")
    with pytest.raises(CrdError) as e:
        load_generator(tmp_path / "g.pth", GeneratorSpec("resnet", ngf=16))
    msg = str(e.value)
    assert "\n" not in msg and "'model.1.weight'" in msg and "(8, 3, 7, 7)" in msg and "(16, 3, 7, 7)" in msg
    with pytest.raises(CrdError, match="missing key 'model.10.conv_block.1.conv.0.weight'"):
        load_generator(tmp_path / "g.pth", GeneratorSpec("mobile_resnet", ngf=8))


def test_not_a_generator_and_corrupt_files(tmp_path):
    torch.save(build_discriminator().state_dict(), tmp_path / "d.pth")
    with pytest.raises(CrdError):
        load_generator(tmp_path / "d.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CrdError, match="not a readable safetensors"):
        load_generator(tmp_path / "bad.safetensors")
    (tmp_path / "bad.pth").write_bytes(b"nope")
    with pytest.raises(CrdError, match="not a readable PyTorch checkpoint"):
        load_generator(tmp_path / "bad.pth")
    with pytest.raises(CrdError, match="checkpoint not found"):
        load_generator(tmp_path / "missing.pth")


def test_safetensors_roundtrip_rebuilds_from_metadata(tmp_path):
    g = build_generator("mobile_resnet", 4, n_blocks=3)
    save_generator(g, tmp_path / "s.safetensors")
    g2 = load_generator(tmp_path / "s.safetensors")
    assert g2.spec == g.spec
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(g.eval()(x), g2(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp files


def test_stride():
    assert generator_stride(GeneratorSpec("resnet")) == 4
    assert generator_stride(GeneratorSpec("unet", num_downs=8)) == 256
    with pytest.raises(CrdError, match="unknown generator"):
        build_generator("nope", 8)
