"""The original CycleGAN ``ResnetGenerator``, module-for-module, so official checkpoints load.

Key layout (ngf=64, 9 blocks): ``model.1`` first 7x7 conv, ``model.4`` / ``model.7`` stride-2
convs, ``model.10`` .. ``model.18`` residual blocks (``conv_block.1`` / ``conv_block.5``),
``model.19`` / ``model.22`` transposed convs, ``model.26`` last 7x7 conv.

Two options beyond the original: ``affine`` InstanceNorm (as some published teachers were trained),
and ``residual``: the output is ``clamp(x + head(features), -1, 1)`` instead of ``tanh(head(...))``,
so a student imitating a subtle photo->photo translation starts near the identity (no extra MACs).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from crdtool.models.colour_skip import ColourSkip
from crdtool.models.layers import conv_bias, norm_layer


class ResnetBlock(nn.Module):
    """x + [pad, conv3x3, norm, relu, (dropout), pad, conv3x3, norm]."""

    def __init__(self, dim: int, norm: str = "instance", dropout: float = 0.0, affine: bool = False):
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=bias),
            norm_layer(norm, dim, affine),
            nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim, affine)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def encoder(input_nc: int, ngf: int, norm: str, affine: bool = False) -> list[nn.Module]:
    """Conv7x7 stem + two stride-2 downsamplings (ngf -> 2ngf -> 4ngf)."""
    bias = conv_bias(norm)
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(input_nc, ngf, 7, bias=bias),
        norm_layer(norm, ngf, affine),
        nn.ReLU(True),
    ]
    for i in range(2):
        c = ngf * 2**i
        layers += [nn.Conv2d(c, c * 2, 3, stride=2, padding=1, bias=bias), norm_layer(norm, c * 2, affine),
                   nn.ReLU(True)]
    return layers


def decoder(output_nc: int, ngf: int, norm: str, affine: bool = False, residual: bool = False) -> list[nn.Module]:
    """Two stride-2 transposed convs (4ngf -> 2ngf -> ngf) + Conv7x7 head + tanh (identity when the
    generator adds its input and clamps instead; same module indices either way)."""
    bias = conv_bias(norm)
    layers: list[nn.Module] = []
    for i in range(2):
        c = ngf * 2 ** (2 - i)
        layers += [
            nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
            norm_layer(norm, c // 2, affine),
            nn.ReLU(True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Identity() if residual else nn.Tanh()]
    return layers


def residual_output(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The global input skip: x + y kept in the image range (exports to ONNX as Add + Clip)."""
    return torch.clamp(x + y, -1.0, 1.0)


def generator_output(gen: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward of both resnet families: ``gen.model``, then the input skip (plain or colour) if any."""
    if gen.colour_skip is None:
        y = gen.model(x)
        return residual_output(x, y) if gen.residual else y
    features = gen.model[:gen.bottleneck](x)
    return residual_output(gen.colour_skip(x, features), gen.model[gen.bottleneck:](features))


def residual_taps(gen: nn.Module, blocks: list[int]) -> tuple[list[nn.Module], int]:
    """The modules whose outputs are a resnet-family generator's features after residual block k, for each
    k of ``blocks`` (0: the encoder's end, before the first block), and the width of those features (the
    same at every block). ``ValueError`` for a generator without residual blocks or a k out of range."""
    model = getattr(gen, "model", None)
    model = model if isinstance(model, nn.Sequential) else nn.Sequential()
    first = next((i for i, m in enumerate(model) if hasattr(m, "conv_block")), None)
    if first is None:
        raise ValueError(f"{type(gen).__name__} has no residual blocks (a resnet or mobile_resnet generator has)")
    n = sum(hasattr(m, "conv_block") for m in model)
    for k in blocks:
        if not 0 <= k <= n:
            raise ValueError(f"block {k} is not in 0..{n} ({type(gen).__name__} has {n} residual blocks)")
    width = [m for m in model[:first] if isinstance(m, nn.Conv2d)][-1].out_channels
    return [model[first - 1 + k] for k in blocks], width


class ResnetGenerator(nn.Module):
    """CycleGAN generator: 56.80 GMACs / 11.378M params at ngf=64, 9 blocks, 256x256."""

    stride = 4

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", dropout: float = 0.0, affine: bool = False, residual: bool = False,
                 colour_skip: bool = False, skip_filter: bool = False):
        super().__init__()
        blocks = [ResnetBlock(ngf * 4, norm, dropout, affine) for _ in range(n_blocks)]
        self.residual = residual
        self.model = nn.Sequential(*encoder(input_nc, ngf, norm, affine), *blocks,
                                   *decoder(output_nc, ngf, norm, affine, residual))
        self.bottleneck = len(self.model) - len(decoder(output_nc, ngf, norm, affine, residual))
        self.colour_skip = ColourSkip(output_nc, ngf * 4, smooth=skip_filter) if colour_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return generator_output(self, x)
