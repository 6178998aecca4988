"""GAN objectives for the PatchGAN discriminator: LSGAN (CycleGAN) and hinge (Pix2Pix in CRD).

Losses are computed in float32 whatever the logits' dtype (bf16 squares lose too much).
The discriminator loss is 0.5 * (real + fake), as in pix2pix/CycleGAN, so D learns at half the
rate of G.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crdtool.errors import CrdError

MODES = ("lsgan", "hinge")


class GANLoss:
    """``GANLoss("lsgan")``: MSE of D's logits to 1 (real) / 0 (fake).
    ``GANLoss("hinge")``: D: mean(relu(1 - real)) + mean(relu(1 + fake)); G: -mean(fake)."""

    def __init__(self, mode: str = "lsgan"):
        if mode not in MODES:
            raise CrdError(f"unknown GAN loss {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Loss for G given D's logits on G's output (D frozen or not, gradient flows to G)."""
        fake = fake_logits.float()
        if self.mode == "lsgan":
            return F.mse_loss(fake, torch.ones_like(fake))
        return -fake.mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """0.5 * (loss on real + loss on fake); pass fake logits of a detached G output."""
        real, fake = real_logits.float(), fake_logits.float()
        if self.mode == "lsgan":
            loss_real = F.mse_loss(real, torch.ones_like(real))
            loss_fake = F.mse_loss(fake, torch.zeros_like(fake))
        else:
            loss_real = F.relu(1.0 - real).mean()
            loss_fake = F.relu(1.0 + fake).mean()
        return 0.5 * (loss_real + loss_fake)

    def __repr__(self) -> str:
        return f"GANLoss({self.mode!r})"
