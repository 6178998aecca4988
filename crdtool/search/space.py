"""The AutoGAN-Distiller search space: width choices per position, arch descriptions, and MACs.

The layers themselves are model code (``crdtool.models.searchable_ops``, shared by the supernet and
the derived ``searched`` generator); this module re-exports them so a search space needs one import.

MACs follow the literature convention (torchprofile, the numbers papers quote, and ``crdtool profile``'s
default): a convolution costs output elements x in_channels/groups x k x k, a transposed convolution is
counted the same way over its *output* grid, biases, norms, activations and additions cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from crdtool.errors import CrdError
from crdtool.profile import format_macs  # noqa: F401  (re-exported: search tables print MACs)
from crdtool.models.searchable_ops import (  # noqa: F401  (re-exported: the search API's layers)
    ARCH_FORMAT,
    ARCH_VERSION,
    DEFAULT_EXPAND,
    OPS,
    ConvLayer,
    FinalLayer,
    head_layers,
    inherit_weights,
    make_op,
    match_channels,
    stem_layers,
)

OP_SHORT = {"conv1x1": "c1", "conv3x3": "c3", "resblock": "rb", "invres": "ir"}
DEFAULT_RATIOS: tuple[float, ...] = (4 / 12, 6 / 12, 8 / 12, 10 / 12, 12 / 12)


# ---------------------------------------------------------------------------------------------- MACs


def conv_macs(h_out: int, w_out: int, c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    """Output elements x in/groups x k x k (also for a transposed conv, over its output grid)."""
    return h_out * w_out * c_out * (c_in // groups) * k * k


def op_macs(op: str, c_in: int, c_out: int, h: int, w: int, expand: int = DEFAULT_EXPAND) -> int:
    """MACs of one cell operator at ``h`` x ``w`` (the body's resolution)."""
    if op == "conv1x1":
        return conv_macs(h, w, c_in, c_out, 1)
    if op == "conv3x3":
        return conv_macs(h, w, c_in, c_out, 3)
    if op == "resblock":
        return conv_macs(h, w, c_in, c_out, 3) + conv_macs(h, w, c_out, c_out, 3)
    if op == "invres":
        e = c_out * expand
        return conv_macs(h, w, c_in, e, 1) + conv_macs(h, w, e, e, 3, groups=e) + conv_macs(h, w, e, c_out, 1)
    raise CrdError(f"unknown cell operator {op!r}; expected one of {', '.join(OPS)}")


def stem_macs(i: int, c_in: int, c_out: int, h: int, w: int) -> int:
    """Stem layer ``i`` (0: Conv7x7 at full size, 1/2: stride-2 Conv3x3 to 1/2 and 1/4 size)."""
    if i == 0:
        return conv_macs(h, w, c_in, c_out, 7)
    return conv_macs(h // 2**i, w // 2**i, c_in, c_out, 3)


def head_macs(i: int, c_in: int, c_out: int, h: int, w: int) -> int:
    """Head layer ``i`` (0: ConvT to 1/2 size, 1: ConvT to full size, 2: the Conv7x7 output layer)."""
    if i == 2:
        return conv_macs(h, w, c_in, c_out, 7)
    return conv_macs(h // 2 ** (1 - i), w // 2 ** (1 - i), c_in, c_out, 3)


def arch_macs(arch: dict[str, Any], size: int | tuple[int, int]) -> dict[str, Any]:
    """Lookup-table MACs of an arch description at input ``size``: ``{"total", "stem", "cells", "head"}``."""
    h, w = (size, size) if isinstance(size, int) else size
    if h % 4 or w % 4:
        raise CrdError(f"input size {h}x{w} must be divisible by 4 for a searched generator")
    stem_w = list(arch["stem"])
    stem = [stem_macs(i, c_in, c_out, h, w) for i, (c_in, c_out) in enumerate(zip([arch["input_nc"], *stem_w], stem_w))]
    cells, c_in = [], stem_w[-1]
    for cell in arch["cells"]:
        cells.append(op_macs(cell["op"], c_in, cell["width"], h // 4, w // 4, arch.get("expand", DEFAULT_EXPAND)))
        c_in = cell["width"]
    head_in = [c_in, *arch["head"]]
    head_out = [*arch["head"], arch["output_nc"]]
    head = [head_macs(i, a, b, h, w) for i, (a, b) in enumerate(zip(head_in, head_out))]
    return {"total": sum(stem) + sum(cells) + sum(head), "stem": stem, "cells": cells, "head": head}


def parse_macs(text: str | int | float, what: str = "budget") -> float:
    """``"1.4G"``, ``"350M"``, ``"88e6"`` or a number -> MACs; one-line CrdError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().upper().removesuffix("MACS").removesuffix("MAC").strip()
        mult = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(s[-1:], 1.0)
        if s[-1:] in "KMGT" and s:
            s = s[:-1]
        try:
            value = float(s) * mult
        except ValueError:
            raise CrdError(f"{what} {text!r} is not a MAC count; write e.g. 1.4G, 350M or 88e6") from None
    if not math.isfinite(value) or value <= 0:
        raise CrdError(f"{what} must be a positive MAC count, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------- the space


def round_width(x: float, multiple: int) -> int:
    return max(multiple, int(round(x / multiple)) * multiple)


def width_choices(base: int, ratios: Sequence[float], multiple: int) -> list[int]:
    """Ratios of ``base``, rounded to multiples of ``multiple``, deduplicated, ascending."""
    return sorted({round_width(base * r, multiple) for r in ratios})


@dataclass(frozen=True)
class SearchSpace:
    """Widths are ratios of CycleGAN's ngf / 2ngf / 4ngf per position; the body runs at 4ngf, 1/4 size."""

    ngf: int = 32
    n_cells: int = 9
    ops: tuple[str, ...] = OPS
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    multiple: int = 8
    expand: int = DEFAULT_EXPAND
    input_nc: int = 3
    output_nc: int = 3
    stem_mult: tuple[int, ...] = field(default=(1, 2, 4), init=False)
    head_mult: tuple[int, ...] = field(default=(2, 1), init=False)

    def __post_init__(self):
        bad = [o for o in self.ops if o not in OPS]
        if bad or not self.ops:
            raise CrdError(f"search.ops {list(self.ops)} must be a non-empty subset of {list(OPS)}")
        if self.n_cells < 1:
            raise CrdError(f"search.cells must be >= 1, got {self.n_cells}")
        if not self.ratios or any(not (0 < r <= 1) for r in self.ratios):
            raise CrdError(f"search.width_ratios must be in (0, 1], got {list(self.ratios)}")

    @property
    def stem_choices(self) -> list[list[int]]:
        return [width_choices(self.ngf * m, self.ratios, self.multiple) for m in self.stem_mult]

    @property
    def cell_choices(self) -> list[int]:
        return width_choices(self.ngf * 4, self.ratios, self.multiple)

    @property
    def head_choices(self) -> list[list[int]]:
        return [width_choices(self.ngf * m, self.ratios, self.multiple) for m in self.head_mult]

    @property
    def positions(self) -> list[list[int]]:
        """Width choices of every searchable position in network order: 3 stem, n_cells cells, 2 head."""
        return [*self.stem_choices, *([self.cell_choices] * self.n_cells), *self.head_choices]

    def make_arch(self, widths: Sequence[int], ops: Sequence[str], meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """An arch description from per-position widths (network order) and per-cell operators."""
        widths = [int(w) for w in widths]
        arch = {
            "format": ARCH_FORMAT, "version": ARCH_VERSION, "input_nc": self.input_nc, "output_nc": self.output_nc,
            "norm": "instance", "expand": self.expand, "stem": widths[:3],
            "cells": [{"op": o, "width": w} for o, w in zip(ops, widths[3:3 + self.n_cells])],
            "head": widths[3 + self.n_cells:],
        }
        if meta:
            arch["meta"] = meta
        return arch

    def describe(self) -> dict[str, Any]:
        return {"ngf": self.ngf, "cells": self.n_cells, "ops": list(self.ops), "width_ratios": list(self.ratios),
                "width_multiple": self.multiple, "expand": self.expand, "stem_choices": self.stem_choices,
                "cell_choices": self.cell_choices, "head_choices": self.head_choices}


def short_arch(arch: dict[str, Any]) -> str:
    """One line: ``stem 16/32/64 | c3@64 ir@48 ... | head 32/16``."""
    cells = " ".join(f"{OP_SHORT.get(c['op'], c['op'])}@{c['width']}" for c in arch["cells"])
    return f"stem {'/'.join(map(str, arch['stem']))} | {cells} | head {'/'.join(map(str, arch['head']))}"
