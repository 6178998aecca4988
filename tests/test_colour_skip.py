"""The per-image colour transform on a residual generator's skip (models/colour_skip.py)."""

import pytest
import torch

from crdtool.errors import CrdError
from crdtool.models import GeneratorSpec, build_generator
from crdtool.models.checkpoints import load_generator, save_generator
from crdtool.models.colour_skip import ColourSkip


@pytest.mark.parametrize("family", ["resnet", "mobile_resnet"])
def test_untrained_colour_skip_generator_is_the_identity(family):
    g = build_generator(GeneratorSpec(family, ngf=4, n_blocks=1, residual=True, colour_skip=True)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(g(x), x)


def test_fixed_prediction_applies_matrix_and_offset_per_pixel():
    skip = ColourSkip(3, feature_channels=2)
    with torch.no_grad():  # a predictor that ignores its input: A = I + (bias of the first 9), b = last 3
        delta = torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        skip.predict[-1].bias.copy_(torch.cat([delta.flatten(), torch.tensor([0.2, 0.0, -0.3])]))
    x = torch.tensor([0.5, -0.2, 0.1]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = skip(x, torch.zeros(1, 2, 1, 1))
    # by hand: [0.5 + 0.5 * -0.2, -0.2, 2 * 0.1] + [0.2, 0, -0.3]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.6, -0.2, -0.1]))


def test_matrix_depends_on_the_image():
    torch.manual_seed(0)
    skip = ColourSkip(3, feature_channels=2)
    torch.nn.init.normal_(skip.predict[-1].weight, 0.0, 0.5)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    x[1] = x[0] * 0.5 + 0.3  # same picture, other colour statistics
    feats = torch.zeros(2, 2, 4, 4)
    out = skip(x, feats)
    one = skip(x[:1], feats[:1])
    assert torch.allclose(out[:1], one, atol=1e-6)  # images of a batch do not mix
    recovered = (out[1] - 0.5 * out[0]).std()  # a shared affine map would keep out[1] = 0.5 out[0] + c
    assert recovered > 1e-3


def test_spec_round_trip_and_errors(tmp_path):
    with pytest.raises(CrdError, match="colour_skip = true needs residual = true"):
        GeneratorSpec("mobile_resnet", ngf=4, colour_skip=True).resolved()
    with pytest.raises(CrdError, match="does not support colour_skip"):
        GeneratorSpec("unet", ngf=4, num_downs=3, colour_skip=True).resolved()
    g = build_generator(GeneratorSpec("mobile_resnet", ngf=4, n_blocks=1, residual=True, colour_skip=True))
    save_generator(g, tmp_path / "g.safetensors")
    h = load_generator(tmp_path / "g.safetensors")
    assert h.spec.colour_skip and h.spec.describe() == "mobile_resnet ngf4 residual colour_skip"
    assert "colour_skip" not in GeneratorSpec("mobile_resnet", ngf=4).to_dict()  # plain specs read as before


def test_cost_is_a_rounding_error_of_the_student():
    from crdtool.profile import profile_spec

    plain = profile_spec(GeneratorSpec("mobile_resnet", ngf=16, residual=True), 256)
    colour = profile_spec(GeneratorSpec("mobile_resnet", ngf=16, residual=True, colour_skip=True), 256)
    extra = colour.macs["literature"] - plain.macs["literature"]
    assert 589_824 <= extra < 1_000_000  # the per-pixel 3x3 matrix (9 x 256 x 256) plus pooling and the MLP
    assert colour.unsupported_ops == {}


@pytest.mark.parametrize("family", ["resnet", "mobile_resnet"])
def test_skip_filter_starts_as_the_identity_and_learns(family):
    spec = GeneratorSpec(family, ngf=4, n_blocks=1, residual=True, colour_skip=True, skip_filter=True)
    g = build_generator(spec).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(g(x), x)
    target = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1)
    opt = torch.optim.Adam(g.colour_skip.smooth.parameters(), lr=0.05)
    first = None
    for _ in range(60):  # the filter alone can become the 3x3 box blur the target is
        loss = (g(x) - target).abs().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_skip_filter_spec_round_trip_cost_and_error(tmp_path):
    from crdtool.profile import profile_spec

    with pytest.raises(CrdError, match="skip_filter = true needs colour_skip = true"):
        GeneratorSpec("mobile_resnet", ngf=4, residual=True, skip_filter=True).resolved()
    spec = GeneratorSpec("mobile_resnet", ngf=4, n_blocks=1, residual=True, colour_skip=True, skip_filter=True)
    save_generator(build_generator(spec), tmp_path / "g.safetensors")
    h = load_generator(tmp_path / "g.safetensors")
    assert h.spec.skip_filter and h.spec.describe().endswith("colour_skip skip_filter")
    base = profile_spec(GeneratorSpec("mobile_resnet", ngf=16, residual=True, colour_skip=True), 256)
    filtered = profile_spec(GeneratorSpec("mobile_resnet", ngf=16, residual=True, colour_skip=True,
                                          skip_filter=True), 256)
    assert filtered.macs["literature"] - base.macs["literature"] == 3 * 9 * 256 * 256  # one 3x3 tap per pixel
