"""Generators (resnet, mobile_resnet, unet, searched; SR: rrdb, sr_resnet, sr_searched) and the PatchGAN discriminator."""

from crdtool.models.registry import (
    GeneratorSpec,
    build_discriminator,
    build_generator,
    generator_stride,
    list_generators,
    register_generator,
)
from crdtool.models import searched as _searched  # noqa: F401,E402  (registers the "searched" family)
from crdtool.models import rrdb as _rrdb, sr_student as _sr_student  # noqa: F401,E402  (SR families)

__all__ = ["GeneratorSpec", "build_discriminator", "build_generator", "generator_stride", "list_generators",
           "register_generator"]
