"""Super-resolution scores exactly as SR papers compute them: PSNR and SSIM on the Y channel.

Convention (EDSR, ESRGAN, AGD, and the anchors in the README): Y of YCbCr, ITU-R BT.601 studio range
(16-235) in double precision from the uint8 RGB images; the HR image mod-cropped to the scale; a border
of ``scale`` pixels cropped from both; a greyscale image is scored on its own single channel; SSIM as
Wang et al.'s MATLAB ``ssim_index`` (11x11 Gaussian, sigma 1.5, K1 0.01, K2 0.03, L 255, valid region).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from crdtool.data.sr import SRPair, imresize, to_tensor, to_uint8

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def luma(img: np.ndarray) -> np.ndarray:
    """float64 HxW scoring channel: BT.601 Y (16-235) of uint8 RGB, or a greyscale image's own values."""
    if img.ndim == 2:
        return img.astype(np.float64)
    return img.astype(np.float64) @ _Y_WEIGHTS + 16.0


def grey_like(sr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """A model's RGB output scored against a greyscale HR: the luma weights normalised to sum 1."""
    if hr.ndim == 2 and sr.ndim == 3:
        return np.floor(np.clip(sr.astype(np.float64) @ (_Y_WEIGHTS * 255 / 219), 0, 255) + 0.5).astype(np.uint8)
    return sr


def shave(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """PSNR (dB) between two uint8 images on the scoring channel, ``border`` pixels cropped."""
    a, b = shave(luma(grey_like(sr, hr)), border), shave(luma(hr), border)
    if a.shape != b.shape:
        raise ValueError(f"psnr_y: shapes differ, {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """2-D Gaussian filter, 'valid' region only; separable, so two 1-D passes (scipy) instead of 11x11."""
    from scipy.ndimage import correlate1d

    y = correlate1d(correlate1d(x, taps, axis=0, mode="constant"), taps, axis=1, mode="constant")
    r = len(taps) // 2
    return y[r:-r, r:-r]


def ssim_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """Mean SSIM on the scoring channel, ``border`` cropped."""
    a, b = shave(luma(grey_like(sr, hr)), border), shave(luma(hr), border)
    if a.shape != b.shape:
        raise ValueError(f"ssim_y: shapes differ, {a.shape} vs {b.shape}")
    g = _gaussian_taps()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    s_aa = _filter_valid(a * a, g) - mu_a ** 2
    s_bb = _filter_valid(b * b, g) - mu_b ** 2
    s_ab = _filter_valid(a * b, g) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return float(ssim.mean())


@dataclass
class SetScore:
    """PSNR/SSIM per image and their means over one set."""

    psnr: float
    ssim: float
    per_image: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"psnr": self.psnr, "ssim": self.ssim,
                "per_image": {k: {"psnr": p, "ssim": s} for k, (p, s) in self.per_image.items()}}


def score_set(outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], names: Sequence[str],
              border: int) -> SetScore:
    per = {n: (psnr_y(o, t, border), ssim_y(o, t, border)) for o, t, n in zip(outputs, targets, names)}
    return SetScore(float(np.mean([p for p, _ in per.values()])), float(np.mean([s for _, s in per.values()])), per)


def bicubic_upscale(pair: SRPair, scale: int) -> np.ndarray:
    """MATLAB bicubic x``scale`` of the LR image (the baseline every SR paper quotes); grey stays grey."""
    lr = pair.lr[:, :, 0] if pair.hr.ndim == 2 else pair.lr
    return imresize(lr, float(scale))


def evaluate_sr(upscale: Callable[[torch.Tensor], torch.Tensor], pairs: Sequence[SRPair], scale: int,
                reference: Sequence[np.ndarray] | None = None) -> tuple[SetScore, list[np.ndarray]]:
    """Run ``upscale`` (1x3xhxw in [0, 1] -> 1x3xHxW) on each whole LR image and score it against HR
    (or against ``reference`` images, e.g. a teacher's outputs); returns the scores and the uint8 outputs."""
    outs = []
    for pair in pairs:
        with torch.no_grad():
            y = upscale(to_tensor(pair.lr)[None])
        outs.append(to_uint8(y[0]))
    targets = list(reference) if reference is not None else [p.hr for p in pairs]
    return score_set(outs, targets, [p.name for p in pairs], scale), outs


@dataclass(frozen=True)
class SRParity:
    """An exported SR model's outputs against PyTorch fp32's on the same whole LR images.

    ``psnr_db`` is PSNR-Y as SR papers score it (uint8 outputs, BT.601 Y, ``border`` pixels cropped), from the
    squared error pooled over every image's pixels (inf only when every uint8 output is identical);
    ``psnr_min_db`` is the worst single image; ``max_abs`` / ``mean_abs`` are on the float outputs in [0, 1].
    """

    max_abs: float
    mean_abs: float
    psnr_db: float
    psnr_min_db: float
    n_images: int

    def to_dict(self) -> dict:
        def db(v: float) -> float | None:
            return None if math.isinf(v) else round(v, 3)

        return {"metric": "psnr_y", "max_abs": self.max_abs, "mean_abs": self.mean_abs, "psnr_y_db": db(self.psnr_db),
                "psnr_y_min_db": db(self.psnr_min_db), "n_images": self.n_images}


def sr_parity(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray], border: int) -> SRParity:
    """``outputs`` against ``reference``: one float (1, 3, H, W) array in [0, 1] per LR image, sizes may differ."""
    from crdtool.errors import CrdError

    def psnr(se: float, n: int) -> float:
        return math.inf if se == 0 else 10 * math.log10(255.0 ** 2 * n / se)

    max_abs = abs_sum = se_sum = 0.0
    n_el = n_px = 0
    worst = math.inf
    for ref, out in zip(reference, outputs, strict=True):
        if ref.shape != out.shape:
            raise CrdError(f"output shape {tuple(out.shape)} differs from the PyTorch output {tuple(ref.shape)}")
        diff = out.astype(np.float64) - ref.astype(np.float64)
        if not np.all(np.isfinite(diff)):
            return SRParity(math.inf, math.inf, -math.inf, -math.inf, len(reference))
        err = np.abs(diff)
        max_abs, abs_sum, n_el = max(max_abs, float(err.max())), abs_sum + float(err.sum()), n_el + err.size
        a = shave(luma(to_uint8(torch.from_numpy(np.ascontiguousarray(out[0])))), border)
        b = shave(luma(to_uint8(torch.from_numpy(np.ascontiguousarray(ref[0])))), border)
        se = float(np.sum((a - b) ** 2))
        worst = min(worst, psnr(se, a.size))
        se_sum, n_px = se_sum + se, n_px + a.size
    return SRParity(max_abs, abs_sum / max(n_el, 1), psnr(se_sum, n_px), worst, len(reference))
