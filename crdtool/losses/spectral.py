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
"""

from __future__ import annotations

import torch
import torch.nn as nn

from crdtool.errors import CrdError


def high_band_mask(h: int, w: int, min_freq: float, device=None) -> torch.Tensor:
    """(h, w // 2 + 1) bool mask of the ``rfft2`` bins with max(|fy|, |fx|) >= ``min_freq`` (cycles/px)."""
    fy = torch.fft.fftfreq(h, device=device).abs()[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.maximum(fy.expand(h, fx.shape[1]), fx.expand(h, fx.shape[1])) >= min_freq


def amplitude_spectrum(x: torch.Tensor) -> torch.Tensor:
    """|rfft2| of (N, C, H, W), orthonormal: Parseval holds, so amplitudes are on the pixels' scale.
    The small epsilon keeps the gradient finite in an empty bin (``abs`` of a complex 0 has none)."""
    f = torch.fft.rfft2(x.float(), norm="ortho")
    return (f.real.square() + f.imag.square() + 1e-12).sqrt()


class SpectralAmplitudeLoss(nn.Module):
    """Mean |A_s - A_t| over the high-band bins of the two images' amplitude spectra (per channel)."""

    def __init__(self, min_freq: float = 0.25):
        super().__init__()
        if not 0.0 <= min_freq <= 0.5:
            raise CrdError(f"loss.spectral_min_freq must be in [0, 0.5] cycles per pixel, got {min_freq}")
        self.min_freq = float(min_freq)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise CrdError(f"spectral loss: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
        h, w = student.shape[-2:]
        mask = high_band_mask(h, w, self.min_freq, student.device)
        diff = (amplitude_spectrum(student) - amplitude_spectrum(teacher)).abs()
        return diff[..., mask].mean()
