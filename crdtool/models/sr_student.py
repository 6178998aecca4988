"""Efficient super-resolution students: ``sr_resnet`` (fixed) and ``sr_searched`` (an ``sr_arch.json``).

Both are one network, ``SRNet``: a 3x3 head conv to ``num_feat`` channels, a chain of cells at LR
resolution, a 3x3 conv back to ``num_feat`` added to the head's features (ESRGAN's long skip), then a
3x3 conv to ``3 * scale**2`` channels and a pixel shuffle (ESPCN), plus a bilinear upsampling of the
input (the network only learns the residual). Every conv runs at LR resolution, so the cost is
proportional to the LR area; ESRGAN instead runs three 64-channel convs at 2x and 4x resolution
(87G of its 1174.85G at a 256x256 input), which alone would take most of a 110.9G budget.

Cell operators are AutoGAN-Distiller's SR operators (its ``OPS``): ``conv3x3``, ``conv3x3_d2``,
``conv3x3_d4`` (dilated), ``residual`` (conv-act-conv plus shortcut, act), ``dwsblock`` (depthwise 3x3,
act, 1x1, act) and ``skip`` (identity when the width is unchanged, else a 1x1 conv), each with
LeakyReLU 0.2 and no norm (AGD_SR runs with batch norm disabled). Where AGD's residual shortcut
changes width it uses a 1x1 conv; so does crdtool.

The description (``sr_arch.json``, stored in every checkpoint's spec)::

    {"format": "crdtool.sr_arch", "version": 1, "scale": 4, "num_feat": 32,
     "cells": [{"op": "residual", "width": 32}, {"op": "dwsblock", "width": 48}, ...], "meta": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from crdtool.errors import CrdError
from crdtool.fileio import write_bytes_atomic
from crdtool.models.searched import validate_description

SR_ARCH_FORMAT = "crdtool.sr_arch"
SR_ARCH_VERSION = 1
#: AutoGAN-Distiller's SR cell operators, in the order the search's operator logits use.
SR_OPS: tuple[str, ...] = ("skip", "conv3x3", "conv3x3_d2", "conv3x3_d4", "residual", "dwsblock")
SCALES = (2, 3, 4)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2, inplace=True)


class SkipOp(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else _lrelu(self.proj(x))


class ConvOp(nn.Module):
    def __init__(self, c_in: int, c_out: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _lrelu(self.conv(x))


class ResidualOp(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.proj = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return _lrelu(self.conv2(_lrelu(self.conv1(x))) + shortcut)


class DwsOp(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _lrelu(self.pw(_lrelu(self.dw(x))))


def make_sr_op(op: str, c_in: int, c_out: int) -> nn.Module:
    if op == "skip":
        return SkipOp(c_in, c_out)
    if op.startswith("conv3x3"):
        return ConvOp(c_in, c_out, dilation={"conv3x3": 1, "conv3x3_d2": 2, "conv3x3_d4": 4}[op])
    if op == "residual":
        return ResidualOp(c_in, c_out)
    if op == "dwsblock":
        return DwsOp(c_in, c_out)
    raise ValueError(f"unknown SR cell operator {op!r}; expected one of {SR_OPS}")


def sr_op_macs(op: str, c_in: int, c_out: int, h: int, w: int) -> int:
    """Exact conv MACs of one cell at ``h`` x ``w`` (what ``crdtool profile`` counts; biases excluded)."""
    hw = h * w
    if op == "skip":
        return 0 if c_in == c_out else hw * c_in * c_out
    if op.startswith("conv3x3"):
        return hw * c_in * c_out * 9
    if op == "residual":
        return hw * (c_in * c_out * 9 + c_out * c_out * 9 + (c_in * c_out if c_in != c_out else 0))
    if op == "dwsblock":
        return hw * (c_in * 9 + c_in * c_out)
    raise ValueError(f"unknown SR cell operator {op!r}")


def sr_fixed_macs(num_feat: int, last_width: int, scale: int, h: int, w: int) -> int:
    """Head conv, body conv and the shuffle conv at LR ``h`` x ``w``."""
    return h * w * 9 * (3 * num_feat + last_width * num_feat + num_feat * 3 * scale * scale)


class SRNet(nn.Module):
    """LR RGB in [0, 1] -> HR RGB; see the module docstring."""

    stride = 1

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        arch = validate_sr_arch(arch)
        self.arch = arch
        self.scale = arch["scale"]
        nf = arch["num_feat"]
        self.conv_first = nn.Conv2d(3, nf, 3, padding=1)
        cells, c = [], nf
        for cell in arch["cells"]:
            cells.append(make_sr_op(cell["op"], c, cell["width"]))
            c = cell["width"]
        self.cells = nn.Sequential(*cells)
        self.conv_body = nn.Conv2d(c, nf, 3, padding=1)
        self.conv_up = nn.Conv2d(nf, 3 * self.scale ** 2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.cells(feat))
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return base + self.shuffle(self.conv_up(feat))


# ------------------------------------------------------------------------------------ descriptions


class _Cell(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    op: Literal[SR_OPS]  # type: ignore[valid-type]
    width: int = Field(gt=0, le=4096)


class _SRArch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal[SR_ARCH_FORMAT] = SR_ARCH_FORMAT  # type: ignore[valid-type]
    version: Literal[SR_ARCH_VERSION] = SR_ARCH_VERSION  # type: ignore[valid-type]
    scale: Literal[SCALES]  # type: ignore[valid-type]
    num_feat: int = Field(gt=0, le=4096)
    cells: list[_Cell] = Field(min_length=0, max_length=256)
    meta: dict[str, Any] = Field(default_factory=dict)


def validate_sr_arch(data: Any, source: str = "sr arch") -> dict[str, Any]:
    """Check a description and return it normalised; one-line CrdError naming the field."""
    return validate_description(_SRArch, data, source)


def is_sr_arch(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == SR_ARCH_FORMAT


def resnet_arch(num_feat: int, n_blocks: int, scale: int) -> dict[str, Any]:
    """The fixed student: ``n_blocks`` residual cells of width ``num_feat`` (an EDSR-baseline-like body)."""
    return validate_sr_arch({"scale": scale, "num_feat": num_feat,
                             "cells": [{"op": "residual", "width": num_feat} for _ in range(n_blocks)]})


def sr_arch_macs(arch: dict[str, Any], h: int, w: int) -> int:
    """Conv MACs of the described network at an LR input of ``h`` x ``w`` (equals profile's exact count)."""
    arch = validate_sr_arch(arch)
    total, c = 0, arch["num_feat"]
    for cell in arch["cells"]:
        total += sr_op_macs(cell["op"], c, cell["width"], h, w)
        c = cell["width"]
    return total + sr_fixed_macs(arch["num_feat"], c, arch["scale"], h, w)


def sr_arch_to_json(arch: dict[str, Any]) -> str:
    """Readable JSON: header fields, one line per cell, ``meta`` last."""
    data = validate_sr_arch(arch)
    head = [f"  {json.dumps(k)}: {json.dumps(data[k])}" for k in ("format", "version", "scale", "num_feat")]
    cells = ",\n".join(f"    {json.dumps(c)}" for c in data["cells"])
    meta = json.dumps(data["meta"], indent=2, sort_keys=True).replace("\n", "\n  ")
    return "{\n" + ",\n".join([*head, f'  "cells": [\n{cells}\n  ]', f'  "meta": {meta}']) + "\n}\n"


def save_sr_arch(arch: dict[str, Any], path: str | Path) -> Path:
    write_bytes_atomic(path, sr_arch_to_json(arch).encode())
    return Path(path)


def sr_arch_spec(arch: dict[str, Any], source: str = "sr arch"):
    """The ``GeneratorSpec`` of a searched SR network (``ngf`` is informational: ``num_feat``)."""
    from crdtool.models.registry import GeneratorSpec

    arch = validate_sr_arch(arch, source)
    return GeneratorSpec("sr_searched", ngf=arch["num_feat"], n_blocks=len(arch["cells"]), scale=arch["scale"],
                         norm="none", arch=arch).resolved()


def load_arch_spec(path: str | Path):
    """The spec an ``arch.json`` describes: an SR description (``crdtool.sr_arch``) or a CycleGAN one."""
    from crdtool.models.searched import load_arch

    path = Path(path)
    file = path / "arch.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None  # load_arch reports the problem in its own words
    if is_sr_arch(data):
        return sr_arch_spec(data, str(file))
    return load_arch(path)


# ------------------------------------------------------------------------------------ registry
from crdtool.models.registry import GeneratorSpec, register_family_defaults, register_generator  # noqa: E402


@register_generator("sr_resnet", default_norm="none")
def _sr_resnet(spec: GeneratorSpec) -> nn.Module:
    return SRNet(resnet_arch(spec.ngf, spec.n_blocks, spec.scale))


@register_generator("sr_searched", default_norm="none")
def _sr_searched(spec: GeneratorSpec) -> nn.Module:
    if spec.arch is None:
        raise CrdError("generator 'sr_searched' needs an arch description (student = { arch = \"sr_arch.json\" })")
    return SRNet(spec.arch)


register_family_defaults("sr_resnet", stride=1, ngf=32, n_blocks=8, scale=4)
register_family_defaults("sr_searched", stride=1, scale=4)
