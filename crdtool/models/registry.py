"""Generator/discriminator registry: build a model by family name + width, like timm's create_model.

A ``GeneratorSpec`` fully describes a generator; it is stored in every checkpoint crdtool writes so
that profile/export/bench can rebuild the network from the file alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from crdtool.errors import CrdError
from crdtool.models.layers import NORMS, init_weights

_GENERATORS: dict[str, Callable[["GeneratorSpec"], nn.Module]] = {}
_DEFAULT_NORM: dict[str, str] = {}


def register_generator(name: str, default_norm: str = "instance"):
    """Decorator: ``@register_generator("resnet")`` on a ``factory(spec) -> nn.Module``."""

    def wrap(factory: Callable[["GeneratorSpec"], nn.Module]):
        _GENERATORS[name] = factory
        _DEFAULT_NORM[name] = default_norm
        return factory

    return wrap


def list_generators() -> list[str]:
    return sorted(_GENERATORS)


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything needed to rebuild a generator. ``arch`` holds a searched network's description."""

    name: str
    ngf: int = 64
    input_nc: int = 3
    output_nc: int = 3
    norm: str | None = None  # None -> the family's default (instance for resnets, batch for unet)
    n_blocks: int = 9  # resnet / mobile_resnet
    num_downs: int = 8  # unet
    dropout: float = 0.0
    arch: dict[str, Any] | None = field(default=None, hash=False, compare=True)

    def resolved(self) -> "GeneratorSpec":
        if self.name not in _GENERATORS:
            raise CrdError(f"unknown generator {self.name!r}; available: {', '.join(list_generators())}")
        norm = self.norm or _DEFAULT_NORM[self.name]
        if norm not in NORMS:
            raise CrdError(f"unknown norm {norm!r} for generator {self.name!r}; expected one of {NORMS}")
        if self.ngf < 1:
            raise CrdError(f"generator ngf must be >= 1, got {self.ngf}")
        return dataclasses.replace(self, norm=norm)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.resolved())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CrdError(f"unknown generator field(s) {unknown}; known: {sorted(known)}")
        if "name" not in data:
            raise CrdError("generator description has no 'name'")
        return cls(**data).resolved()

    def describe(self) -> str:
        if self.name == "searched":
            return "searched"
        return f"{self.name} ngf{self.ngf}"


def build_generator(spec: GeneratorSpec | str, ngf: int | None = None, *, init: bool = True, **kwargs) -> nn.Module:
    """``build_generator("mobile_resnet", 16)`` or ``build_generator(spec)``; returns an initialised module."""
    if isinstance(spec, str):
        spec = GeneratorSpec(name=spec, ngf=64 if ngf is None else ngf, **kwargs)
    spec = spec.resolved()
    model = _GENERATORS[spec.name](spec)
    model.spec = spec  # type: ignore[attr-defined]  # lets profile/export/save recover the description
    return init_weights(model) if init else model


def build_discriminator(input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> nn.Module:
    from crdtool.models.patchgan import NLayerDiscriminator

    return init_weights(NLayerDiscriminator(input_nc, ndf, n_layers, norm))


def generator_stride(model_or_spec: nn.Module | GeneratorSpec) -> int:
    """Input sides must be divisible by this (4 for resnets, 2**num_downs for the unet)."""
    spec = model_or_spec if isinstance(model_or_spec, GeneratorSpec) else getattr(model_or_spec, "spec", None)
    if spec is None:
        return int(getattr(model_or_spec, "stride", 1))
    return 2**spec.num_downs if spec.name == "unet" else 4


@register_generator("resnet")
def _resnet(spec: GeneratorSpec) -> nn.Module:
    from crdtool.models.resnet import ResnetGenerator

    return ResnetGenerator(spec.input_nc, spec.output_nc, spec.ngf, spec.n_blocks, spec.norm, spec.dropout)


@register_generator("mobile_resnet")
def _mobile_resnet(spec: GeneratorSpec) -> nn.Module:
    from crdtool.models.mobile_resnet import MobileResnetGenerator

    return MobileResnetGenerator(spec.input_nc, spec.output_nc, spec.ngf, spec.n_blocks, spec.norm, spec.dropout)


@register_generator("unet", default_norm="batch")
def _unet(spec: GeneratorSpec) -> nn.Module:
    from crdtool.models.unet import UnetGenerator

    return UnetGenerator(spec.input_nc, spec.output_nc, spec.ngf, spec.num_downs, spec.norm, spec.dropout > 0)
