"""The searchable ops: layers shared by the AGD supernet and the networks it derives.

One set of layer classes serves both networks. In the supernet every layer is built at its widest
choice and a width is selected by multiplying its output with a channel mask (the first ``w`` channels
kept); in a derived network (``models.searched``) the same classes are built at the chosen widths and run
without masks. Because a mask keeps a leading block of channels, a derived layer's weights are exactly the
leading block of the supernet's (``inherit_weights`` slices them), and both networks compute the same
function.

Where these ops differ from AutoGAN-Distiller's public code, on purpose (see docs/method.md):

- shortcut: a parameter-free ``match_channels`` (slice or zero-pad) where AGD uses a 1x1 conv + IN
  projection followed by a ReLU after the sum. The identity path costs no MACs and keeps a masked
  supernet cell and its derived cell the same function;
- inverted residual: the hidden width is ``expand`` x the *output* width (AGD: 4 x the input width),
  so the hidden block narrows with the cell's sampled width and ``op_macs`` follows it;
- padding: reflection, as in the CycleGAN teacher being distilled (AGD pads with zeros), except the
  two stride-2 stem convs, which zero-pad like CycleGAN's encoder.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.errors import CrdError

ARCH_FORMAT = "crdtool.arch"
ARCH_VERSION = 1

#: Cell operators, in the order the supernet's operator logits use.
OPS: tuple[str, ...] = ("conv1x1", "conv3x3", "resblock", "invres")
DEFAULT_EXPAND = 4


# ---------------------------------------------------------------------------------------------- layers


def _apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask.view(1, -1, 1, 1).to(x.dtype)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Parameter-free shortcut between widths: keep the first ``channels`` or zero-pad up to them.

    This is what the supernet's masked identity computes, so derived networks keep residuals even
    where a cell changes width.
    """
    c = x.shape[1]
    if c == channels:
        return x
    if c > channels:
        return x[:, :channels]
    return F.pad(x, (0, 0, 0, 0, 0, channels - c))


class ConvLayer(nn.Module):
    """conv (reflect or zero padding, or a stride-2 transposed conv) -> InstanceNorm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, transposed: bool = False,
                 reflect: bool = True, groups: int = 1):
        super().__init__()
        pad = k // 2
        self.pad = nn.ReflectionPad2d(pad) if (reflect and pad and not transposed) else nn.Identity()
        if transposed:
            self.conv = nn.ConvTranspose2d(c_in, c_out, k, stride=stride, padding=pad, output_padding=stride - 1)
        else:
            self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=0 if reflect else pad, groups=groups)
        self.norm = nn.InstanceNorm2d(c_out, affine=False, track_running_stats=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _apply_mask(F.relu(self.norm(self.conv(self.pad(x)))), mask)


class ConvOp(nn.Module):
    """Cell operator ``conv1x1`` / ``conv3x3``: conv -> IN -> ReLU, no shortcut."""

    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        self.body = ConvLayer(c_in, c_out, k)

    def forward(self, x, mask=None, hidden_mask=None):
        return self.body(x, mask)


class ResBlockOp(nn.Module):
    """Cell operator ``resblock``: CycleGAN's residual block, two 3x3 convs; shortcut ``match_channels``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvLayer(c_in, c_out, 3)
        self.pad = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3)
        self.norm = nn.InstanceNorm2d(c_out, affine=False, track_running_stats=False)
        self.c_out = c_out

    def forward(self, x, mask=None, hidden_mask=None):
        h = self.conv1(x, mask)
        y = self.norm(self.conv2(self.pad(h))) + match_channels(x, self.c_out)
        return _apply_mask(y, mask)


class InvResOp(nn.Module):
    """Cell operator ``invres`` (MobileNetV2): 1x1 expand to ``expand`` x output width, depthwise 3x3,
    1x1 project (no activation); shortcut ``match_channels``."""

    def __init__(self, c_in: int, c_out: int, expand: int = DEFAULT_EXPAND):
        super().__init__()
        hidden = c_out * expand
        self.expand = ConvLayer(c_in, hidden, 1)
        self.dw = ConvLayer(hidden, hidden, 3, groups=hidden)
        self.project = nn.Conv2d(hidden, c_out, 1)
        self.norm = nn.InstanceNorm2d(c_out, affine=False, track_running_stats=False)
        self.c_out = c_out

    def forward(self, x, mask=None, hidden_mask=None):
        h = self.dw(self.expand(x, hidden_mask), hidden_mask)
        y = self.norm(self.project(h)) + match_channels(x, self.c_out)
        return _apply_mask(y, mask)


def make_op(op: str, c_in: int, c_out: int, expand: int = DEFAULT_EXPAND) -> nn.Module:
    if op == "conv1x1":
        return ConvOp(c_in, c_out, 1)
    if op == "conv3x3":
        return ConvOp(c_in, c_out, 3)
    if op == "resblock":
        return ResBlockOp(c_in, c_out)
    if op == "invres":
        return InvResOp(c_in, c_out, expand)
    raise CrdError(f"unknown cell operator {op!r}; expected one of {', '.join(OPS)}")


class FinalLayer(nn.Module):
    """ReflectionPad(3) -> Conv7x7 -> tanh: the CycleGAN output layer."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.pad = nn.ReflectionPad2d(3)
        self.conv = nn.Conv2d(c_in, c_out, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(self.pad(x)))


def stem_layers(input_nc: int, widths: Sequence[int]) -> nn.ModuleList:
    """Conv7x7 (reflect) then two stride-2 Conv3x3 (zero padding), as in CycleGAN's encoder."""
    c0, c1, c2 = widths
    return nn.ModuleList([ConvLayer(input_nc, c0, 7), ConvLayer(c0, c1, 3, stride=2, reflect=False),
                          ConvLayer(c1, c2, 3, stride=2, reflect=False)])


def head_layers(c_in: int, widths: Sequence[int], output_nc: int) -> tuple[nn.ModuleList, FinalLayer]:
    """Two stride-2 ConvTranspose3x3 then the Conv7x7 + tanh output layer."""
    h1, h2 = widths
    ups = nn.ModuleList([ConvLayer(c_in, h1, 3, stride=2, transposed=True), ConvLayer(h1, h2, 3, stride=2, transposed=True)])
    return ups, FinalLayer(h2, output_nc)


def inherit_weights(source: nn.Module, target: nn.Module, prefix_map: dict[str, str] | None = None) -> nn.Module:
    """Copy into ``target`` the leading block of each matching ``source`` tensor (widths are prefixes).

    ``prefix_map`` rewrites target key prefixes to source ones (a derived cell's ``cells.3.`` is the
    supernet's ``cells.3.ops.<op>.``).
    """
    src = source.state_dict()
    out = {}
    for key, t in target.state_dict().items():
        skey = key
        for a, b in (prefix_map or {}).items():
            if key.startswith(a):
                skey = b + key[len(a):]
                break
        s = src[skey]
        out[key] = s[tuple(slice(0, n) for n in t.shape)].clone()
    target.load_state_dict(out)
    return target
