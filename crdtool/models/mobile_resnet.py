"""GAN Compression / OMGD ``MobileResnetGenerator``: the CycleGAN skeleton with separable convs.

ngf=16 is the CRD/OMGD CycleGAN student (1.408 GMACs, 0.137M params at 256x256); ngf=64 is the
teacher the CRD code trains online (18.31 GMACs, 1.987M params).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from crdtool.models.colour_skip import ColourSkip
from crdtool.models.layers import norm_layer
from crdtool.models.resnet import decoder, encoder, generator_output


class SeparableConv2d(nn.Module):
    """Depthwise kxk (bias) -> norm -> pointwise 1x1 (bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "instance",
                 affine: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size, groups=in_channels, bias=True),
            norm_layer(norm, in_channels, affine),
            nn.Conv2d(in_channels, out_channels, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MobileResnetBlock(nn.Module):
    """x + [pad, sepconv, norm, relu, dropout, pad, sepconv, norm]."""

    def __init__(self, dim: int, norm: str = "instance", dropout: float = 0.0, affine: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            SeparableConv2d(dim, dim, 3, norm, affine),
            norm_layer(norm, dim, affine),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.ReflectionPad2d(1),
            SeparableConv2d(dim, dim, 3, norm, affine),
            norm_layer(norm, dim, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class MobileResnetGenerator(nn.Module):
    """``affine`` / ``residual`` as in ``ResnetGenerator``."""

    stride = 4

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 16, n_blocks: int = 9,
                 norm: str = "instance", dropout: float = 0.0, affine: bool = False, residual: bool = False,
                 colour_skip: bool = False, skip_filter: bool = False):
        super().__init__()
        blocks = [MobileResnetBlock(ngf * 4, norm, dropout, affine) for _ in range(n_blocks)]
        self.residual = residual
        self.model = nn.Sequential(*encoder(input_nc, ngf, norm, affine), *blocks,
                                   *decoder(output_nc, ngf, norm, affine, residual))
        self.bottleneck = len(self.model) - len(decoder(output_nc, ngf, norm, affine, residual))
        self.colour_skip = ColourSkip(output_nc, ngf * 4, smooth=skip_filter) if colour_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return generator_output(self, x)
