"""Generators (resnet, mobile_resnet, unet, searched) and the PatchGAN discriminator."""

from crdtool.models.registry import (
    GeneratorSpec,
    build_discriminator,
    build_generator,
    generator_stride,
    list_generators,
    register_generator,
)
from crdtool.models import searched as _searched  # noqa: F401,E402  (registers the "searched" family)

__all__ = ["GeneratorSpec", "build_discriminator", "build_generator", "generator_stride", "list_generators",
           "register_generator"]
