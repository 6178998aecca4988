"""The fine detail of an image: the image minus its Gaussian blur.

A discriminator shown only this band judges the teacher's texture and nothing else: colours and
shapes, which the pixel loss already pins down, are gone from what it sees, so it cannot push the
student away from them. ``discriminator.sees = "detail"`` gives D this view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), kernel 2 * round(3 sigma) + 1 taps, reflect padding."""
    k = 2 * round(3 * sigma) + 1
    r = torch.arange(k, dtype=img.dtype, device=img.device) - k // 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    c = img.shape[1]
    out = F.pad(img, (k // 2,) * 4, mode="reflect")
    out = F.conv2d(out, g.view(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, g.view(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c)


def fine_detail(img: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """``img`` minus its Gaussian blur: the band a ``sigma`` px blur removes."""
    return img - gaussian_blur(img, sigma)
