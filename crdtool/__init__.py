"""crdtool: Content Relationship Distillation for image-to-image GANs, from recipe to device."""

from crdtool.errors import CrdError

__version__ = "0.1.0"
__all__ = ["CrdError", "__version__"]
