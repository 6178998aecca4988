"""A per-image colour transform on a residual generator's input skip.

A residual student outputs ``clamp(x + head(features))``. Its features pass through InstanceNorm,
which removes each image's global colour statistics, so the head cannot make a colour change that
depends on them; the skip carries ``x`` unchanged. A teacher that grades every photo differently
(the vintagify CycleGAN: one 3x3 colour matrix plus offset fitted per test photo reproduces its
output at 28.2 dB PSNR, one shared matrix at only 24.7 dB: benchmarks/results/colour_ceiling.md)
needs exactly that. ``ColourSkip``
predicts the matrix and offset from the input's channel means and standard deviations (which
InstanceNorm hides from the rest of the network) and the pooled bottleneck features (what the image
shows), and applies them to the skip: ``out = clamp(A x + b + head(features))``.

The predictor's last layer starts at zero, so an untrained generator is still the identity. Cost at
256x256: ~0.85M MACs (the 3x3 matrix per pixel, pooling, a 70-32-12 MLP), 0.06% of the ngf16 student.

``smooth = True`` (spec ``skip_filter``) first passes the skip through a learned 3x3 filter per channel
(reflect padding; it starts as the identity): ``out = clamp(A (k * x) + b + head(features))``. The
vintagify teacher softens the photo (its outputs hold about 60% of the input's finest detail:
benchmarks/results/student_sharpness.md), and a skip that carries every pixel of the input leaves the
head to cancel that detail through the whole network. Cost at 256x256: ~1.8M MACs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ColourSkip(nn.Module):
    """``skip(x, features) -> A(x) x + b(x)``, per image; ``reset()`` makes it the identity."""

    def __init__(self, channels: int, feature_channels: int, hidden: int = 32, smooth: bool = False):
        super().__init__()
        self.channels = channels
        self.predict = nn.Sequential(nn.Linear(2 * channels + feature_channels, hidden), nn.ReLU(True),
                                     nn.Linear(hidden, channels * channels + channels))
        self.smooth = nn.Conv2d(channels, channels, 3, groups=channels, bias=False) if smooth else None
        self.reset()

    def reset(self) -> None:
        nn.init.zeros_(self.predict[-1].weight)
        nn.init.zeros_(self.predict[-1].bias)
        if self.smooth is not None:  # the identity kernel: 1 at the centre
            nn.init.zeros_(self.smooth.weight)
            with torch.no_grad():
                self.smooth.weight[:, :, 1, 1] = 1.0

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        mean = x.mean((2, 3))
        std = ((x * x).mean((2, 3)) - mean * mean).clamp_min(1e-6).sqrt()
        p = self.predict(torch.cat([mean, std, features.mean((2, 3))], 1))
        matrix = p[:, :c * c].view(n, c, c) + torch.eye(c, dtype=x.dtype, device=x.device)
        if self.smooth is not None:
            x = self.smooth(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        return torch.matmul(matrix, x.flatten(2)).view_as(x) + p[:, c * c:, None, None]
