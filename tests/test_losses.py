"""Losses: the fast CRD equals the literal formulation (value and gradient), batch semantics,
perceptual loss on a random VGG-16, weight loading, GAN objectives on known numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crdtool.errors import CrdError
from crdtool.losses import (CRDLoss, GANLoss, InstanceRKDLoss, PerceptualLoss, VGG16Features, load_vgg16,
                            rkd_angle, rkd_distance)
from crdtool.losses.perceptual import LAYERS, gram
from crdtool.losses.relational import (crd_literal, rkd_angle_literal, rkd_distance_literal, rkd_loss,
                                       rkd_loss_literal, slice_pieces)


def images(n: int, h: int, w: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A student/teacher pair that looks like generator outputs: smooth, correlated, in (-1, 1)."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.randn(n, 3, h // 4, w // 4, generator=g), size=(h, w), mode="bilinear")
    s = torch.tanh(base + 0.3 * torch.randn(n, 3, h, w, generator=g))
    t = torch.tanh(1.2 * base + 0.3 * torch.randn(n, 3, h, w, generator=g))
    return s.to(dtype), t.to(dtype)


def value_and_grad(fn, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = s.clone().requires_grad_(True)
    value = fn(s, t)
    (grad,) = torch.autograd.grad(value, s)
    return value.detach(), grad


def assert_close(fast: tuple, ref: tuple, rel: float) -> None:
    (v, g), (rv, rg) = fast, ref
    assert torch.isfinite(g).all()
    assert abs(float(v - rv)) <= rel * abs(float(rv)), (float(v), float(rv))
    assert float((g - rg).norm()) <= rel * float(rg.norm()), float((g - rg).norm() / rg.norm())
    assert torch.allclose(g, rg, rtol=0, atol=rel * float(rg.abs().max()))


CASES = [  # (batch, height, width, patch, per_image, pool_patches)
    (2, 32, 32, 8, False, True),
    (3, 32, 48, 16, False, True),
    (2, 48, 32, 16, True, True),
    (2, 64, 64, 16, False, False),
    (3, 32, 64, 8, True, True),
]


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("batch,h,w,patch,per_image,pool", CASES)
def test_crd_equals_literal(dtype, rel, batch, h, w, patch, per_image, pool):
    s, t = images(batch, h, w, seed=h + w + batch, dtype=dtype)
    kw = dict(patch_size=patch, per_image=per_image, pool_patches=pool)
    fast = value_and_grad(CRDLoss(**kw), s, t)
    ref = value_and_grad(lambda a, b: crd_literal(a, b, **kw), s, t)
    assert fast[0].dtype == dtype and float(ref[0]) > 1e-4  # a real, non-trivial value
    assert_close(fast, ref, rel)


@pytest.mark.parametrize("budget", [1, 3 * 32 * 32])
def test_crd_chunking_does_not_change_the_result(monkeypatch, budget):
    """Test images fit in one chunk by default; force 1 and 3 anchors per chunk (with a remainder)."""
    import crdtool.losses.relational as rel_mod

    s, t = images(2, 32, 32, seed=21)
    ref = value_and_grad(lambda a, b: crd_literal(a, b, patch_size=8), s, t)
    monkeypatch.setitem(rel_mod.CHUNK_ELEMENTS, "cpu", budget)
    assert rel_mod._chunk_rows(32, s.device) == (1 if budget == 1 else 3)
    assert_close(value_and_grad(CRDLoss(patch_size=8), s, t), ref, 1e-10)


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_rkd_terms_equal_literal_with_duplicate_pieces(dtype, rel):
    g = torch.Generator().manual_seed(0)
    xs = 3 * torch.randn(24, 40, generator=g, dtype=dtype) + 2
    xt = xs + 0.5 * torch.randn(24, 40, generator=g, dtype=dtype)
    xs[5] = xs[0]  # flat regions give bit-identical pieces: the unit vector between them is 0
    xs[9] = xs[0]
    xt[3] = xt[7]
    for fast_fn, ref_fn in ((rkd_distance, rkd_distance_literal), (rkd_angle, rkd_angle_literal)):
        assert_close(value_and_grad(fast_fn, xs, xt), value_and_grad(ref_fn, xs, xt), rel)
    assert_close(value_and_grad(lambda a, b: rkd_loss(a, b, 0.5, 3.0), xs, xt),
                 value_and_grad(lambda a, b: rkd_loss_literal(a, b, 0.5, 3.0), xs, xt), rel)


def test_rkd_matches_hand_computed_angle():
    """Three points of a right isosceles triangle: every cosine is known in closed form."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # stretched
    # cos at vertex 0 between (1,0) and (0,1): 0 for both. At vertex 1: x: 1/sqrt2, y: 2/sqrt5.
    # At vertex 2: x: 1/sqrt2, y: 1/sqrt5. Each appears twice (jk and kj) among 27 entries.
    d1, d2 = 2 ** -0.5 - 2 / 5 ** 0.5, 2 ** -0.5 - 1 / 5 ** 0.5
    expected = 2 * (0.5 * d1 ** 2 + 0.5 * d2 ** 2) / 27
    assert float(rkd_angle(x, y)) == pytest.approx(expected, rel=1e-12)
    assert float(rkd_angle_literal(x, y)) == pytest.approx(expected, rel=1e-12)


def test_batch_semantics():
    s, t = images(3, 32, 32, seed=7)
    # Pix2Pix: every granularity per image, summed over images.
    per = CRDLoss(patch_size=8, per_image=True)
    assert float(per(s, t)) == pytest.approx(sum(float(per(s[b:b + 1], t[b:b + 1])) for b in range(3)), rel=1e-10)
    # CycleGAN: rows/columns per image, averaged over the batch ...
    rows = CRDLoss(patch_size=8, columns=0, patches=0)
    assert float(rows(s, t)) == pytest.approx(sum(float(rows(s[b:b + 1], t[b:b + 1])) for b in range(3)) / 3,
                                              rel=1e-10)
    # ... patches of all images pooled into one set of 3 * 16 pieces.
    pooled = CRDLoss(patch_size=8, rows=0, columns=0)
    ps, pt = slice_pieces(s, "patches", 8), slice_pieces(t, "patches", 8)
    assert ps.shape == (3, 16, 3 * 64)
    expected = rkd_loss(ps.reshape(48, -1), pt.reshape(48, -1))
    assert float(pooled(s, t)) == pytest.approx(float(expected), rel=1e-10)
    per_image_mean = sum(float(rkd_loss(ps[b], pt[b])) for b in range(3)) / 3
    assert abs(float(pooled(s, t)) - per_image_mean) > 1e-6  # pooling really changes the relations
    unpooled = CRDLoss(patch_size=8, rows=0, columns=0, pool_patches=False)
    assert float(unpooled(s, t)) == pytest.approx(per_image_mean, rel=1e-10)


def test_slice_pieces_layout_and_non_contiguous_input():
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    rows, cols = slice_pieces(x, "rows"), slice_pieces(x, "columns")
    patches = slice_pieces(x, "patches", 8)
    assert rows.shape == (2, 16, 72) and cols.shape == (2, 24, 48) and patches.shape == (2, 6, 192)
    assert torch.equal(rows[1, 5], x[1, :, 5, :].reshape(-1))
    assert torch.equal(cols[0, 17], x[0, :, :, 17].reshape(-1))
    assert torch.equal(patches[1, 4], x[1, :, 8:16, 8:16].reshape(-1))  # row-major: patch (1, 1)
    s, t = images(1, 32, 32, seed=3)
    loss = CRDLoss(patch_size=16)
    cl = s.contiguous(memory_format=torch.channels_last), t.contiguous(memory_format=torch.channels_last)
    assert float(loss(*cl)) == pytest.approx(float(loss(s, t)), rel=1e-12)


def test_terms_weights_and_skips():
    s, t = images(2, 32, 32, seed=11)
    full = CRDLoss(patch_size=16)
    terms = full.terms(s, t)
    assert set(terms) == {"rows", "columns", "patches"}
    assert float(full(s, t)) == pytest.approx(float(sum(terms.values())), rel=1e-12)
    heavy = CRDLoss(patch_size=16, rows=3.0, columns=0.0).terms(s, t)
    assert set(heavy) == {"rows", "patches"}
    assert float(heavy["rows"]) == pytest.approx(3 * float(terms["rows"]), rel=1e-12)
    # distance_weight / angle_weight recombine the two RKD parts linearly
    dist = CRDLoss(patch_size=16, angle_weight=0.0)(s, t)
    ang = CRDLoss(patch_size=16, distance_weight=0.0, angle_weight=1.0)(s, t)
    assert float(full(s, t)) == pytest.approx(float(dist + 2 * ang), rel=1e-10)
    # Weight 0 skips the granularity entirely: no patch-size check either.
    odd_s, odd_t = images(1, 40, 32, seed=1)
    assert float(CRDLoss(patch_size=16, patches=0)(odd_s, odd_t)) > 0
    none = CRDLoss(rows=0, columns=0, patches=0)
    assert none.terms(s, t) == {} and float(none(s, t)) == 0.0


def test_non_divisible_size_is_a_crd_error():
    s, t = images(1, 40, 32, seed=1)
    with pytest.raises(CrdError, match=r"16.*40x32|40x32.*16"):
        CRDLoss(patch_size=16)(s, t)
    # programming errors (bad arguments, mismatched shapes) keep their traceback: not one-line user errors
    with pytest.raises(ValueError) as err:
        CRDLoss(patch_size=0)
    assert not isinstance(err.value, CrdError)
    with pytest.raises(ValueError, match="same shape") as err:
        CRDLoss(patch_size=16)(s, t[:, :, :32])
    assert not isinstance(err.value, CrdError)


def test_no_gradient_to_teacher_and_identical_outputs_give_zero():
    s, t = images(2, 32, 32, seed=5, dtype=torch.float32)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = CRDLoss(patch_size=16)(s, t)
    loss.backward()
    with torch.no_grad():  # evaluation path: same value, no gradient bookkeeping
        assert float(CRDLoss(patch_size=16)(s, t)) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and float(s.grad.abs().max()) > 0
    same = s.detach().clone().requires_grad_(True)
    zero = CRDLoss(patch_size=16)(same, s.detach())
    zero.backward()
    assert abs(float(zero.detach())) < 1e-9
    assert float(same.grad.abs().max()) < 1e-9


def test_autocast_bf16_inputs_are_computed_in_float32():
    s, t = images(1, 32, 32, seed=9, dtype=torch.float32)
    sb, tb = s.bfloat16().requires_grad_(True), t.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = CRDLoss(patch_size=16)(sb, tb)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(sb.grad.float()).all()
    reference = CRDLoss(patch_size=16)(sb.detach().float(), tb.float())
    assert float(value.detach()) == pytest.approx(float(reference), rel=1e-6)


def test_instance_rkd():
    s, t = images(4, 32, 32, seed=2)
    inst = InstanceRKDLoss()
    fast = value_and_grad(inst, s, t)
    ref = value_and_grad(lambda a, b: rkd_loss_literal(a.reshape(4, -1), b.reshape(4, -1)), s, t)
    assert_close(fast, ref, 1e-10)
    assert float(inst(s[:1], t[:1])) == 0.0  # no relations inside a batch of one


# ----------------------------------------------------------------------------- perceptual

def random_vgg(seed: int = 0) -> VGG16Features:
    torch.manual_seed(seed)
    vgg = VGG16Features()
    for m in vgg.modules():  # keep activations O(1) through 10 random layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    return vgg


def torchvision_layout_state(vgg: VGG16Features) -> dict[str, torch.Tensor]:
    """What torchvision's vgg16().state_dict() holds: features.0 ... features.28 and classifier.*.
    conv5 and the classifier are ignored by the loader, so they are small placeholders here."""
    state = {k: v.clone() for k, v in vgg.state_dict().items()}
    for i in (24, 26, 28):
        state[f"features.{i}.weight"] = torch.zeros(512, 512, 1, 1)
        state[f"features.{i}.bias"] = torch.zeros(512)
    for i in (0, 3, 6):
        state[f"classifier.{i}.weight"] = torch.zeros(4, 4)
        state[f"classifier.{i}.bias"] = torch.zeros(4)
    return state


def test_vgg_features_layout():
    vgg = random_vgg()
    keys = list(vgg.state_dict())
    assert keys[0] == "features.0.weight" and keys[-1] == "features.21.bias" and len(keys) == 20
    assert all(not p.requires_grad for p in vgg.parameters())
    feats = vgg(torch.rand(1, 3, 32, 32))
    assert list(feats) == list(LAYERS)
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    vgg.train()
    assert not vgg.training


def test_perceptual_loss_values_and_gradients():
    vgg = random_vgg()
    loss = PerceptualLoss(vgg)
    s, t = images(2, 32, 32, seed=4, dtype=torch.float32)
    s.requires_grad_(True)
    t.requires_grad_(True)
    style, feature = loss(s, t)
    fs, ft = vgg((s.detach() + 1) / 2), vgg((t.detach() + 1) / 2)

    def manual_gram(f):
        n, c, h, w = f.shape
        return torch.einsum("nchw,ndhw->ncd", f, f) / (c * h * w)

    exp_style = sum((manual_gram(fs[k]) - manual_gram(ft[k])).abs().mean() for k in LAYERS)
    exp_feature = (fs["relu2_2"] - ft["relu2_2"]).abs().mean()
    sv, fv = float(style.detach()), float(feature.detach())
    assert sv == pytest.approx(float(exp_style), rel=1e-4) and sv > 0
    assert fv == pytest.approx(float(exp_feature), rel=1e-5) and fv > 0
    (1e4 * style + 10 * feature).backward()
    assert t.grad is None and s.grad is not None and float(s.grad.abs().max()) > 0
    assert all(p.grad is None for p in vgg.parameters())
    same_style, same_feature = loss(t.detach(), t.detach())
    assert float(same_style) == 0.0 and float(same_feature) == 0.0
    assert torch.allclose(gram(fs["relu1_2"]), manual_gram(fs["relu1_2"]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fmt", ["torchvision", "features_only", "safetensors"])
def test_load_vgg16_from_file(tmp_path, fmt):
    vgg = random_vgg(seed=1)
    x = torch.rand(1, 3, 32, 32)
    if fmt == "torchvision":
        path = tmp_path / "vgg16-397923af.pth"
        torch.save(torchvision_layout_state(vgg), path)
    elif fmt == "features_only":  # vgg16().features.state_dict(): keys "0.weight", ...
        path = tmp_path / "features.pth"
        torch.save(vgg.features.state_dict(), path)
    else:
        from safetensors.torch import save_file
        path = tmp_path / "vgg16.safetensors"
        save_file({k: v.contiguous() for k, v in torchvision_layout_state(vgg).items()}, str(path))
    loaded = load_vgg16(path)
    assert all(not p.requires_grad for p in loaded.parameters())
    for name, f in vgg(x).items():
        assert torch.equal(loaded(x)[name], f)


def test_load_vgg16_errors(tmp_path):
    missing = tmp_path / "nope" / "vgg16.pth"
    with pytest.raises(CrdError) as err:
        load_vgg16(missing)
    msg = str(err.value)
    assert str(missing) in msg and "vgg16-397923af.pth" in msg and "loss.vgg_weights" in msg
    assert 'loss.vgg_weights = ""' in msg and "\n" not in msg
    with pytest.raises(CrdError, match="loss.vgg_weights"):
        load_vgg16("")
    bad = tmp_path / "bad.pth"
    state = torchvision_layout_state(random_vgg())
    state["features.2.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, bad)
    with pytest.raises(CrdError, match="features.2.weight"):
        load_vgg16(bad)
    del state["features.2.weight"]
    torch.save(state, bad)
    with pytest.raises(CrdError, match="missing"):
        load_vgg16(bad)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CrdError):
        load_vgg16(tmp_path / "junk.pth")


# ----------------------------------------------------------------------------- adversarial

def test_gan_losses_on_known_inputs():
    lsgan = GANLoss("lsgan")
    assert float(lsgan.generator(torch.tensor([0.5, 1.5, 3.0]))) == pytest.approx((0.25 + 0.25 + 4) / 3)
    real, fake = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, -1.0])
    assert float(lsgan.discriminator(real, fake)) == pytest.approx(0.5 * (2 / 3 + 2 / 3))
    hinge = GANLoss("hinge")
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    assert float(hinge.discriminator(real, fake)) == pytest.approx(0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2) / 3))
    assert float(hinge.generator(fake)) == pytest.approx(1 / 3)
    logits = torch.tensor([0.2, -0.4], dtype=torch.bfloat16, requires_grad=True)
    out = lsgan.generator(logits)
    out.backward()
    assert out.dtype == torch.float32 and logits.grad is not None
    with pytest.raises(CrdError, match="wgan"):
        GANLoss("wgan")


# ----------------------------------------------------------------------------- high-band amplitude spectrum


def test_fine_detail_of_an_impulse_and_of_a_flat_image():
    """sigma 1 px: 7 taps exp(-r^2/2) for r = -3..3 sum to 1 + 2(e^-0.5 + e^-2 + e^-4.5) = 2.505960, so the
    centre tap is 0.399050 and an impulse blurs to 0.399050^2 = 0.159241 at its centre; the detail there is
    1 - 0.159241. A flat image has no detail (reflect padding keeps the border flat too)."""
    from crdtool.losses import fine_detail, gaussian_blur

    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    assert gaussian_blur(x, 1.0)[0, 0, 7, 7].item() == pytest.approx(0.159241, abs=1e-6)
    assert fine_detail(x)[0, 0, 7, 7].item() == pytest.approx(1 - 0.159241, abs=1e-6)
    assert gaussian_blur(x, 1.0).sum().item() == pytest.approx(1.0, abs=1e-6)
    assert fine_detail(torch.full((2, 3, 9, 9), 0.7)).abs().max().item() < 1e-6


def test_spectral_checkerboard_against_hand_count():
    """A checkerboard a*(-1)^(i+j) on 8x8 holds all its energy (a^2 * 64, orthonormal FFT) in the one bin
    (fy, fx) = (0.5, 0.5), amplitude 8a. Of the 8 x 5 rfft2 bins, those with |fy| < 1/4 and fx < 1/4 are
    fy in {0, 1/8, -1/8} x fx in {0, 1/8}: 6, so 34 are in the band and the loss is 8a / 34 against zeros."""
    from crdtool.losses import SpectralAmplitudeLoss

    a = 0.3
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    board = (a * (-1.0) ** (i + j)).expand(1, 1, 8, 8)
    loss = SpectralAmplitudeLoss(0.25)(board, torch.zeros_like(board))
    assert loss.item() == pytest.approx(8 * a / 34, rel=1e-5)


def test_spectral_ignores_low_band_and_phase():
    from crdtool.losses import SpectralAmplitudeLoss

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    loss = SpectralAmplitudeLoss(0.25)
    assert loss(x + 0.3, x).item() < 1e-6  # a brightness shift lives in the DC bin
    assert loss(torch.roll(x, (3, 5), dims=(-2, -1)), x).item() < 1e-5  # a circular shift changes phases only
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    assert loss(blurred, x).item() > 0.05  # removing fine texture does count


def test_spectral_pool_compares_block_energy_not_bins():
    """On 8x8, cos(2 pi (i/2 + j/4)) and cos(2 pi (i/2 + 3j/8)) each put amplitude 4a (a * 64 / 2 / 8) in one
    rfft2 bin: row 4 (|fy| = 1/2), column 2 or 3. Per bin they differ by 4a in two of the 34 in-band bins:
    8a / 34. Both bins lie in the 2x2 block of rows 4-5 and columns 2-3, so with pool 2 the block energy is
    the same and the loss is 0; a block that differs counts its RMS amplitude, (4a / 2) against 0."""
    from crdtool.losses import SpectralAmplitudeLoss

    a = 0.25
    i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    wave = lambda fx: (a * torch.cos(2 * torch.pi * (i / 2 + fx * j))).expand(1, 1, 8, 8)
    assert SpectralAmplitudeLoss(0.25)(wave(0.25), wave(0.375)).item() == pytest.approx(8 * a / 34, rel=1e-4)
    assert SpectralAmplitudeLoss(0.25, pool=2)(wave(0.25), wave(0.375)).item() < 1e-5
    # 2x2 blocks over the 8 x 5 bins (ceil): 4 x 3 = 12, of which only rows 0-1 x columns 0-1 has no
    # in-band bin: 11 blocks. One, rows 4-5 x columns 2-3, holds energy 16a^2 over 4 bins: RMS 2a.
    block = SpectralAmplitudeLoss(0.25, pool=2)(wave(0.25), torch.zeros(1, 1, 8, 8)).item()
    assert block == pytest.approx(4 * a / 2 / 11, rel=1e-4)


def test_spectral_gradient_is_finite_on_flat_images_and_bad_band_is_a_crd_error():
    from crdtool.errors import CrdError
    from crdtool.losses import SpectralAmplitudeLoss

    s = torch.zeros(1, 3, 8, 8, requires_grad=True)
    SpectralAmplitudeLoss()(s, torch.zeros(1, 3, 8, 8)).backward()
    assert torch.isfinite(s.grad).all()
    with pytest.raises(CrdError, match="spectral_min_freq"):
        SpectralAmplitudeLoss(0.7)
    with pytest.raises(CrdError, match="spectral_pool"):
        SpectralAmplitudeLoss(0.25, pool=0)
