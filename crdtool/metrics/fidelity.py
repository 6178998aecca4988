"""Fidelity of one image batch to another (student vs teacher, ONNX vs PyTorch): PSNR, SSIM, max abs.

Images are in the generators' [-1, 1] range; PSNR/SSIM are computed on [0, 1] (peak 1). Two PSNRs, on
purpose, and each table says which it shows:

- ``psnr``: the mean of per-image PSNRs of clamped images: how close one model's *pictures* are to
  another's (the distill table: student vs teacher);
- ``pooled_psnr``: one PSNR of the MSE pooled over the whole batch, unclamped: how far a backend's raw
  *outputs* are from PyTorch's (the export and bench parity columns); a backend that overshoots
  [-1, 1] must show it, and one identical image must not make the batch ``inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over images of per-image PSNR in dB; identical images give ``inf``."""
    x01, y01 = (x.float().clamp(-1, 1) + 1) / 2, (y.float().clamp(-1, 1) + 1) / 2
    mse = (x01 - y01).pow(2).flatten(1).mean(1)
    vals = torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-20)), torch.full_like(mse, float("inf")))
    return float(vals.mean())


def pooled_psnr(reference: np.ndarray | torch.Tensor, output: np.ndarray | torch.Tensor) -> float:
    """PSNR in dB of the MSE pooled over every value of the batch, unclamped; ``inf`` when identical.

    The peak is the [-1, 1] range width (2), so on in-range images it is ``psnr``'s scale (peak 1 on [0, 1]).
    """
    as_np = lambda a: a.detach().double().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)  # noqa: E731
    mse = float(np.mean((as_np(output) - as_np(reference)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(g**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian 11x11, sigma 1.5, K1=0.01, K2=0.03) on [0, 1] images."""
    x01, y01 = (x.float().clamp(-1, 1) + 1) / 2, (y.float().clamp(-1, 1) + 1) / 2
    c = x01.shape[1]
    window = min(window, x01.shape[-1], x01.shape[-2])
    w = _gaussian_window(window).to(x01.device).expand(c, 1, window, window).contiguous()
    mu_x, mu_y = F.conv2d(x01, w, groups=c), F.conv2d(y01, w, groups=c)
    sxx = F.conv2d(x01 * x01, w, groups=c) - mu_x**2
    syy = F.conv2d(y01 * y01, w, groups=c) - mu_y**2
    sxy = F.conv2d(x01 * y01, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


@dataclass
class Fidelity:
    psnr_db: float
    ssim: float
    max_abs: float
    mean_abs: float
    n_images: int

    def to_dict(self) -> dict:
        return {"psnr_db": self.psnr_db, "ssim": self.ssim, "max_abs": self.max_abs, "mean_abs": self.mean_abs,
                "n_images": self.n_images}


def fidelity(output: torch.Tensor, reference: torch.Tensor) -> Fidelity:
    diff = (output.float() - reference.float()).abs()
    return Fidelity(psnr(output, reference), ssim(output, reference), float(diff.max()), float(diff.mean()),
                    output.shape[0])
