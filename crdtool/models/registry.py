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
_STRIDE: dict[str, int] = {}  # input sides must be multiples of this (resnets 4; SR families 1)
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {}  # spec fields a family defaults differently (rrdb: 23 blocks)
_OPTIONS: dict[str, tuple[str, ...]] = {}  # boolean spec fields a family implements (affine, residual)
OPTIONAL_FIELDS = ("affine", "residual", "colour_skip", "skip_filter")


def register_generator(name: str, default_norm: str = "instance", options: tuple[str, ...] = ()):
    """Decorator: ``@register_generator("resnet")`` on a ``factory(spec) -> nn.Module``; ``options``
    names the optional spec fields (``OPTIONAL_FIELDS``) the factory honours."""

    def wrap(factory: Callable[["GeneratorSpec"], nn.Module]):
        _GENERATORS[name] = factory
        _DEFAULT_NORM[name] = default_norm
        _OPTIONS[name] = tuple(options)
        return factory

    return wrap


def register_family_defaults(name: str, stride: int = 4, **defaults: Any) -> None:
    """A family's input stride and its own defaults for spec fields (``family_spec`` applies them)."""
    _STRIDE[name] = stride
    _FAMILY_DEFAULTS[name] = dict(defaults)


def family_spec(name: str, **given: Any) -> "GeneratorSpec":
    """``GeneratorSpec(name, ...)`` with the family's defaults for the fields ``given`` leaves at None."""
    fields = {**_FAMILY_DEFAULTS.get(name, {}), **{k: v for k, v in given.items() if v is not None}}
    return GeneratorSpec(name, **fields).resolved()


def list_generators() -> list[str]:
    return sorted(_GENERATORS)


def _default_sr_field(key: str, value: Any) -> bool:
    """SR fields left at their defaults are not written, so other families' specs read as before."""
    return (key, value) in (("scale", 1), ("num_grow_ch", 32))


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
    scale: int = 1  # super-resolution families: output side / input side
    num_grow_ch: int = 32  # rrdb: channels each dense-block conv adds
    arch: dict[str, Any] | None = field(default=None, hash=False, compare=True)
    affine: bool = False  # InstanceNorm with a learned scale/shift (foreign teachers trained that way)
    residual: bool = False  # out = clamp(x + head(features), -1, 1) instead of tanh(head(features))
    colour_skip: bool = False  # residual with a per-image colour matrix on x (models/colour_skip.py)
    skip_filter: bool = False  # colour skip: a learned 3x3 filter per channel on x first (starts as identity)

    def resolved(self) -> "GeneratorSpec":
        if self.name not in _GENERATORS:
            raise CrdError(f"unknown generator {self.name!r}; available: {', '.join(list_generators())}")
        norm = self.norm or _DEFAULT_NORM[self.name]
        if norm not in NORMS:
            raise CrdError(f"unknown norm {norm!r} for generator {self.name!r}; expected one of {NORMS}")
        if self.ngf < 1:
            raise CrdError(f"generator ngf must be >= 1, got {self.ngf}")
        for option in OPTIONAL_FIELDS:
            if getattr(self, option) and option not in _OPTIONS[self.name]:
                raise CrdError(f"generator {self.name!r} does not support {option} = true "
                               f"(families that do: {', '.join(n for n in list_generators() if option in _OPTIONS[n])})")
        if self.affine and norm != "instance":
            raise CrdError(f"generator affine = true needs norm 'instance', got {norm!r}")
        if self.residual and self.input_nc != self.output_nc:
            raise CrdError(f"generator residual = true needs input_nc == output_nc, got {self.input_nc} and "
                           f"{self.output_nc}")
        if self.colour_skip and not self.residual:
            raise CrdError("generator colour_skip = true needs residual = true (it transforms the input skip)")
        if self.skip_filter and not self.colour_skip:
            raise CrdError("generator skip_filter = true needs colour_skip = true (it filters the colour skip's input)")
        return dataclasses.replace(self, norm=norm)

    def to_dict(self) -> dict[str, Any]:
        """Optional fields appear only when set, so plain specs (and files, run fingerprints) read as before."""
        data = dataclasses.asdict(self.resolved())
        return {k: v for k, v in data.items() if (k not in OPTIONAL_FIELDS or v) and not _default_sr_field(k, v)}

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
        return " ".join([f"{self.name} ngf{self.ngf}", *(o for o in OPTIONAL_FIELDS if getattr(self, o))])


def build_generator(spec: GeneratorSpec | str, ngf: int | None = None, *, init: bool = True, **kwargs) -> nn.Module:
    """``build_generator("mobile_resnet", 16)`` or ``build_generator(spec)``; returns an initialised module."""
    if isinstance(spec, str):
        spec = GeneratorSpec(name=spec, ngf=64 if ngf is None else ngf, **kwargs)
    spec = spec.resolved()
    model = _GENERATORS[spec.name](spec)
    model.spec = spec  # type: ignore[attr-defined]  # lets profile/export/save recover the description
    if not init:
        return model
    init_weights(model)
    if spec.residual:  # a zero head makes the untrained network the identity, where a residual student starts
        head = [m for m in model.model.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    if spec.colour_skip:
        model.colour_skip.reset()
    return model


def build_discriminator(input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> nn.Module:
    from crdtool.models.patchgan import NLayerDiscriminator

    return init_weights(NLayerDiscriminator(input_nc, ndf, n_layers, norm))


def generator_stride(model_or_spec: nn.Module | GeneratorSpec) -> int:
    """Input sides must be divisible by this (4 for resnets, 2**num_downs for the unet)."""
    spec = model_or_spec if isinstance(model_or_spec, GeneratorSpec) else getattr(model_or_spec, "spec", None)
    if spec is None:
        return int(getattr(model_or_spec, "stride", 1))
    return 2**spec.num_downs if spec.name == "unet" else _STRIDE.get(spec.name, 4)


@register_generator("resnet", options=OPTIONAL_FIELDS)
def _resnet(spec: GeneratorSpec) -> nn.Module:
    from crdtool.models.resnet import ResnetGenerator

    return ResnetGenerator(spec.input_nc, spec.output_nc, spec.ngf, spec.n_blocks, spec.norm, spec.dropout,
                           spec.affine, spec.residual, spec.colour_skip, spec.skip_filter)


@register_generator("mobile_resnet", options=OPTIONAL_FIELDS)
def _mobile_resnet(spec: GeneratorSpec) -> nn.Module:
    from crdtool.models.mobile_resnet import MobileResnetGenerator

    return MobileResnetGenerator(spec.input_nc, spec.output_nc, spec.ngf, spec.n_blocks, spec.norm, spec.dropout,
                                 spec.affine, spec.residual, spec.colour_skip, spec.skip_filter)


@register_generator("unet", default_norm="batch")
def _unet(spec: GeneratorSpec) -> nn.Module:
    from crdtool.models.unet import UnetGenerator

    return UnetGenerator(spec.input_nc, spec.output_nc, spec.ngf, spec.num_downs, spec.norm, spec.dropout > 0)
