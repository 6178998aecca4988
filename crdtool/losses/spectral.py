"""High-frequency amplitude loss: the teacher's fine texture, as the energy in each frequency bin.

A pixel loss to a teacher's output teaches the colours and the edges, but the finest texture, the
band above a quarter of the sampling rate, it learns slowly and averages out: where a few pixels'
exact phase is hard to predict, the L1 optimum is smoother than the teacher. FID notices. On the
vintagify teacher, putting the teacher's own high-band *amplitudes* under a pixel-trained student's
phases moved its FID to the teacher's outputs from 81.0 to 76.3 (the teacher's own floor is 70.2);
copying the Nyquist lines alone did nothing (``benchmarks/results/texture_oracle.md``).

``SpectralAmplitudeLoss`` compares the amplitude spectra of the two images (orthonormal 2-D FFT per
channel, so a bin's amplitude is on the scale of a pixel value) in the bins whose larger frequency
component is at least ``min_freq`` cycles per pixel, with an L1. The phase is left to the other terms.

With ``pool = k > 1`` it compares the root-mean-square amplitude of each k x k block of bins instead of
each bin. Grain-like texture has a random amplitude per bin; what a generator can learn to reproduce,
and what FID sees, is how much energy sits in each neighbourhood of frequencies.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.errors import CrdError


def high_band_mask(h: int, w: int, min_freq: float, device=None) -> torch.Tensor:
    """(h, w // 2 + 1) bool mask of the ``rfft2`` bins with max(|fy|, |fx|) >= ``min_freq`` (cycles/px)."""
    fy = torch.fft.fftfreq(h, device=device).abs()[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.maximum(fy.expand(h, fx.shape[1]), fx.expand(h, fx.shape[1])) >= min_freq


def power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """|rfft2|^2 of (N, C, H, W), orthonormal: Parseval holds, so amplitudes are on the pixels' scale."""
    f = torch.fft.rfft2(x.float(), norm="ortho")
    return f.real.square() + f.imag.square()


def amplitude_spectrum(x: torch.Tensor) -> torch.Tensor:
    """|rfft2| of (N, C, H, W). The small epsilon keeps the gradient finite in an empty bin (``abs`` of
    a complex 0 has none)."""
    return (power_spectrum(x) + 1e-12).sqrt()


def band_block_amplitudes(x: torch.Tensor, mask: torch.Tensor, pool: int) -> torch.Tensor:
    """(N, C, blocks) RMS amplitude over the in-band bins of each ``pool`` x ``pool`` block of bins that
    holds any; with ``pool = 1``, the amplitude of each in-band bin."""
    m = mask.to(x.dtype)[None, None]
    power = power_spectrum(x) * m
    if pool > 1:  # the same divisor pools both sums, so their ratio is the mean over in-band bins
        power = F.avg_pool2d(power, pool, stride=pool, ceil_mode=True)
        m = F.avg_pool2d(m, pool, stride=pool, ceil_mode=True)
    keep = m[0, 0] > 0
    return (power[..., keep] / m[0, 0][keep] + 1e-12).sqrt()


class SpectralAmplitudeLoss(nn.Module):
    """Mean |A_s - A_t| over the high-band bins (or ``pool`` x ``pool`` blocks of bins) of the two images'
    amplitude spectra, per channel."""

    def __init__(self, min_freq: float = 0.25, pool: int = 1):
        super().__init__()
        if not 0.0 <= min_freq <= 0.5:
            raise CrdError(f"loss.spectral_min_freq must be in [0, 0.5] cycles per pixel, got {min_freq}")
        if int(pool) != pool or pool < 1:
            raise CrdError(f"loss.spectral_pool must be a whole number of bins >= 1, got {pool}")
        self.min_freq, self.pool = float(min_freq), int(pool)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise CrdError(f"spectral loss: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
        h, w = student.shape[-2:]
        mask = high_band_mask(h, w, self.min_freq, student.device)
        return (band_block_amplitudes(student, mask, self.pool)
                - band_block_amplitudes(teacher, mask, self.pool)).abs().mean()
