"""Small building blocks shared by the generator and discriminator files."""

from __future__ import annotations

import torch.nn as nn

NORMS = ("instance", "batch", "none")


def norm_layer(kind: str, channels: int, affine: bool = False) -> nn.Module:
    """The reference repos' norms: InstanceNorm without running stats (affine only where a foreign
    checkpoint, e.g. vintagify's, was trained that way), BatchNorm always affine."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=affine, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def conv_bias(norm: str) -> bool:
    """Convs carry a bias unless a BatchNorm follows (it would cancel it), as in pix2pix/CycleGAN."""
    return norm != "batch"


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix 'normal' init: conv weights N(0, gain), biases 0, affine norm weights N(1, gain)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module
