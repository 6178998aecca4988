"""Generator family ``searched``: a network derived by ``crdtool search``, rebuilt from its arch description.

The description (``arch.json``, also stored in the spec of every checkpoint) lists the stem widths,
each body cell's operator and width, and the head widths, so profile/export/bench need nothing else::

    {"format": "crdtool.arch", "version": 1, "input_nc": 3, "output_nc": 3, "norm": "instance", "expand": 4,
     "stem": [16, 32, 64], "cells": [{"op": "invres", "width": 64}, ...], "head": [32, 16]}

An optional ``meta`` object (search budget, MACs, crop size...) is carried along but not interpreted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crdtool.errors import CrdError
from crdtool.fileio import write_bytes_atomic
from crdtool.models.registry import GeneratorSpec, register_generator
from crdtool.models.searchable_ops import ARCH_FORMAT, ARCH_VERSION, OPS, head_layers, make_op, stem_layers

Width = Field(gt=0, le=65536)
PosInt = Annotated[int, Field(gt=0, le=65536)]


class _Cell(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    op: Literal[OPS]  # type: ignore[valid-type]
    width: int = Width


class _Arch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal[ARCH_FORMAT] = ARCH_FORMAT  # type: ignore[valid-type]
    version: Literal[ARCH_VERSION]  # type: ignore[valid-type]
    input_nc: int = Width
    output_nc: int = Width
    norm: Literal["instance"] = "instance"
    expand: int = Field(default=4, gt=0, le=16)
    stem: list[PosInt] = Field(min_length=3, max_length=3)
    cells: list[_Cell] = Field(min_length=1, max_length=64)
    head: list[PosInt] = Field(min_length=2, max_length=2)
    meta: dict[str, Any] = Field(default_factory=dict)


def validate_description(schema: type[BaseModel], data: Any, source: str) -> dict[str, Any]:
    """``data`` checked against a pydantic ``schema`` and returned normalised (defaults filled); otherwise a
    one-line CrdError naming the field as a JSON path (``cells[3].op``). Shared by every arch description."""
    if not isinstance(data, dict):
        raise CrdError(f"{source}: expected a JSON object, got {type(data).__name__}")
    try:
        model = schema.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "(root)"
        raise CrdError(f"{source}: field {loc}: {err['msg']}") from None
    return model.model_dump()


def validate_arch(data: Any, source: str = "arch") -> dict[str, Any]:
    """Check a searched network's description and return it normalised; one-line CrdError naming the field."""
    return validate_description(_Arch, data, source)


class SearchedGenerator(nn.Module):
    """Stem -> cells at 1/4 resolution -> head, exactly as described by a validated arch dict."""

    stride = 4

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        arch = validate_arch(arch)
        self.arch = arch
        self.stem = stem_layers(arch["input_nc"], arch["stem"])
        cells, c_in = [], arch["stem"][-1]
        for cell in arch["cells"]:
            cells.append(make_op(cell["op"], c_in, cell["width"], arch["expand"]))
            c_in = cell["width"]
        self.cells = nn.ModuleList(cells)
        self.head, self.final = head_layers(c_in, arch["head"], arch["output_nc"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.stem:
            x = layer(x)
        for cell in self.cells:
            x = cell(x)
        for layer in self.head:
            x = layer(x)
        return self.final(x)


@register_generator("searched")
def _searched(spec: GeneratorSpec) -> nn.Module:
    if spec.arch is None:
        raise CrdError("generator 'searched' needs an arch description (student = { arch = \"arch.json\" })")
    return SearchedGenerator(spec.arch)


def arch_spec(arch: dict[str, Any], source: str = "arch") -> GeneratorSpec:
    """The ``GeneratorSpec`` of a searched network (``ngf`` is informational: the first stem width)."""
    arch = validate_arch(arch, source)
    return GeneratorSpec(name="searched", ngf=arch["stem"][0], input_nc=arch["input_nc"],
                         output_nc=arch["output_nc"], norm="instance", arch=arch).resolved()


def load_arch(path: str | Path) -> GeneratorSpec:
    """Read and validate ``arch.json``; the returned spec builds the network with ``build_generator``."""
    path = Path(path)
    if path.is_dir():
        path = path / "arch.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CrdError(f"arch file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CrdError(f"cannot read arch file {path}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CrdError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    return arch_spec(data, str(path))


def arch_to_json(arch: dict[str, Any]) -> str:
    """Readable JSON: header fields first, one line per cell, ``meta`` last."""
    data = validate_arch(arch)
    parts = [f"  {json.dumps(k)}: {json.dumps(data[k])}" for k in
             ("format", "version", "input_nc", "output_nc", "norm", "expand", "stem")]
    cells = ",\n".join(f"    {json.dumps(c)}" for c in data["cells"])
    parts.append(f'  "cells": [\n{cells}\n  ]')
    parts.append(f'  "head": {json.dumps(data["head"])}')
    meta = json.dumps(data["meta"], indent=2, sort_keys=True).replace("\n", "\n  ")
    parts.append(f'  "meta": {meta}')
    return "{\n" + ",\n".join(parts) + "\n}\n"


def save_arch(arch: dict[str, Any] | GeneratorSpec, path: str | Path) -> Path:
    """Validate and write ``arch.json`` atomically."""
    if isinstance(arch, GeneratorSpec):
        if arch.arch is None:
            raise CrdError(f"generator {arch.describe()!r} has no arch description to save")
        arch = arch.arch
    write_bytes_atomic(path, arch_to_json(arch).encode())
    return Path(path)
