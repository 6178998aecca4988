"""Perceptual (style + feature) loss on a frozen VGG, as in the CRD/OMGD reference code.

Two networks, each described by the object ``load_vgg`` returns (layers, preprocessing, scale):

* VGG-16 from torchvision's ``vgg16`` state dict (e.g. ``vgg16-397923af.pth``), the reference code's
  choice: inputs are mapped from [-1, 1] to [0, 1] and, as in the reference, NOT normalised with the
  ImageNet mean/std. Style on relu1_2, relu2_2, relu3_3, relu4_3; feature on relu2_2.
* VGG-19 from the Keras ImageNet file (``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``, or
  crdtool's safetensors conversion of it, ``crdtool weights get vgg19``) with the Caffe preprocessing
  it was trained with: RGB -> BGR, 0..255, minus the BGR mean. Style on the last ReLU of each of the
  first four blocks (relu1_2, relu2_2, relu3_4, relu4_4: the same resolutions and widths as VGG-16's
  taps); feature on relu2_2. Features are divided by 255 so that the CRD weights (1e4 style, 10
  feature), tuned on a net fed [0, 1] images, stay in range for a net fed 0..255 (see docs/method.md).

Nothing is downloaded here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.errors import CrdError

VGG_FORMAT = "crdtool.vgg"  # safetensors metadata "format" of a converted VGG file
UNIT_RGB = "unit_rgb"  # [-1, 1] -> [0, 1] RGB (the reference code's input to torchvision VGG-16)
CAFFE_BGR = "caffe_bgr"  # [-1, 1] -> 0..255 BGR minus the ImageNet BGR mean (Keras/Caffe VGG)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
PREPROCESSINGS = (UNIT_RGB, CAFFE_BGR)


@dataclass(frozen=True)
class VGGConfig:
    """One VGG variant: its conv stack (channels, "M" = max-pool), the taps the loss reads
    (name -> index in ``features``, torchvision numbering), and which taps feed which term."""

    name: str
    cfg: tuple[Any, ...]  # full stack: every conv the weight files hold
    taps: dict[str, int]
    style_layers: tuple[str, ...]
    feature_layer: str

    @property
    def depth(self) -> int:
        """Modules computed: up to the last tap."""
        return max(self.taps.values()) + 1

    def conv_indices(self) -> list[int]:
        """torchvision ``features`` indices of every conv in ``cfg``."""
        out, i = [], 0
        for v in self.cfg:
            if v == "M":
                i += 1
            else:
                out.append(i)
                i += 2
        return out


VGG16 = VGGConfig("vgg16", (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
                  {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22},
                  ("relu1_2", "relu2_2", "relu3_3", "relu4_3"), "relu2_2")
VGG19 = VGGConfig("vgg19", (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                            512, 512, 512, 512),
                  {"relu1_2": 3, "relu2_2": 8, "relu3_4": 17, "relu4_4": 26},
                  ("relu1_2", "relu2_2", "relu3_4", "relu4_4"), "relu2_2")
CONFIGS = {c.name: c for c in (VGG16, VGG19)}
# VGG-16 taps, kept for callers that name them directly.
LAYERS = VGG16.taps


class VGGFeatures(nn.Module):
    """A frozen VGG ``features`` stack up to its last tap, torchvision module indices (so the same
    state-dict keys ``features.N.*``). ``preprocess`` maps generator images in [-1, 1] to what the
    weights expect; ``forward`` takes preprocessed images and returns the taps (times ``feature_scale``)."""

    def __init__(self, config: VGGConfig = VGG16, preprocessing: str = UNIT_RGB, feature_scale: float = 1.0,
                 source: str = ""):
        super().__init__()
        if preprocessing not in PREPROCESSINGS:
            raise ValueError(f"unknown VGG preprocessing {preprocessing!r}; expected one of {PREPROCESSINGS}")
        self.config, self.preprocessing, self.feature_scale, self.source = config, preprocessing, feature_scale, source
        layers: list[nn.Module] = []
        in_ch = 3
        for v in config.cfg:
            if len(layers) >= config.depth:
                break
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers[: config.depth])
        self.register_buffer("_mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always frozen (no dropout/BN here, but keep it explicit)

    def describe(self) -> str:
        return (f"{self.config.name} ({self.preprocessing} preprocessing; style "
                f"{', '.join(self.config.style_layers)}; feature {self.config.feature_layer})")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Generator output in [-1, 1] (RGB) -> this network's input."""
        unit = (images + 1) / 2
        if self.preprocessing == UNIT_RGB:
            return unit
        return unit.flip(1) * 255.0 - self._mean.to(images.dtype)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        by_index = {i: name for name, i in self.config.taps.items()}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in by_index:
                out[by_index[i]] = x * self.feature_scale if self.feature_scale != 1.0 else x
        return out


class VGG16Features(VGGFeatures):
    """torchvision ``vgg16().features[:23]`` with the reference code's [0, 1] input; stops after relu4_3."""

    def __init__(self):
        super().__init__(VGG16, UNIT_RGB, 1.0)


def vgg19_caffe() -> VGGFeatures:
    """The Keras/Caffe VGG-19 (weights not loaded): Caffe BGR input, features / 255."""
    return VGGFeatures(VGG19, CAFFE_BGR, 1.0 / 255.0)


def _missing_message(problem: str) -> str:
    return (f"{problem}: fetch VGG-19 with 'crdtool weights get vgg19' and set loss.vgg_weights = \"weights:vgg19\", "
            "or give torchvision's ImageNet vgg16 state dict (e.g. vgg16-397923af.pth) as loss.vgg_weights, or turn "
            "the perceptual loss off with loss.vgg_weights = \"\" (or set the perceptual loss weights to 0)")


# ----------------------------------------------------------------------------- reading weight files

def read_keras_vgg(path: str | Path) -> tuple[VGGConfig, dict[str, torch.Tensor]]:
    """A Keras ImageNet VGG ``.h5`` (16 or 19, ``include_top`` or not) as a torchvision-layout state dict.

    Keras stores each conv as a group ``blockB_convK`` holding the kernel (H, W, in, out: the
    "tf dim ordering") and the bias; PyTorch wants (out, in, H, W). Both cross-correlate, so the
    kernel is transposed, not flipped. The classifier (if present) is ignored.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(str(path), "r")
    except OSError as e:
        raise CrdError(f"{path} is not a readable HDF5 file ({e})") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f  # a full-model save nests the weights
        names = sorted((n for n in root if n.startswith("block") and "_conv" in n),
                       key=lambda n: (int(n[5:n.index("_")]), int(n.rsplit("conv", 1)[1])))
        config = {13: VGG16, 16: VGG19}.get(len(names))
        if config is None:
            raise CrdError(f"{path}: expected the 13 (VGG-16) or 16 (VGG-19) Keras conv layers block1_conv1 ..., "
                           f"found {len(names)}")
        state: dict[str, torch.Tensor] = {}
        for name, index in zip(names, config.conv_indices()):
            kernel, bias = _keras_kernel_and_bias(root[name], path, name)
            state[f"features.{index}.weight"] = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous().float()
            state[f"features.{index}.bias"] = torch.from_numpy(bias).float()
    return config, state


def _keras_kernel_and_bias(group, path: Path, name: str):
    import numpy as np

    arrays: list[Any] = []

    def collect(_, obj):
        if hasattr(obj, "shape"):
            arrays.append(obj)

    group.visititems(collect)
    kernels = [a for a in arrays if len(a.shape) == 4]
    biases = [a for a in arrays if len(a.shape) == 1]
    if len(kernels) != 1 or len(biases) != 1:
        raise CrdError(f"{path}: layer {name} should hold one 4-d kernel and one bias, found "
                       f"{[tuple(a.shape) for a in arrays]}")
    kernel, bias = np.asarray(kernels[0]), np.asarray(biases[0])
    if kernel.shape[3] != bias.shape[0]:
        raise CrdError(f"{path}: layer {name} kernel {kernel.shape} does not match its bias {bias.shape}")
    return kernel, bias


def save_vgg(config: VGGConfig, state: dict[str, torch.Tensor], path: str | Path, preprocessing: str,
             feature_scale: float, source: str = "") -> Path:
    """Write a VGG state dict as safetensors whose metadata names the network and its preprocessing."""
    from safetensors.torch import save_file

    from crdtool.fileio import atomic_path

    meta = {"format": VGG_FORMAT, "network": config.name, "preprocessing": preprocessing,
            "feature_scale": json.dumps(feature_scale), "source": source}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    return path


def _torchvision_features(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Keep the ``features.N.*`` entries (bare ``N.*`` keys, as saved from ``vgg().features``, too);
    drop the classifier."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if not key.startswith("features."):
            if key.split(".", 1)[0].isdigit():
                key = "features." + key
            else:
                continue  # classifier.* and the like
        out[key] = value
    if not out:
        raise CrdError(f"{path} holds no VGG 'features.*' weights; expected a torchvision vgg16 state dict")
    return out


def _torchvision_config(state: dict[str, torch.Tensor]) -> VGGConfig:
    """vgg19 files have convs up to features.34; vgg16 up to features.28."""
    top = max((int(k.split(".")[1]) for k in state if k.split(".")[1].isdigit()), default=0)
    return VGG19 if top > 28 else VGG16


def load_vgg(path: str | Path | None) -> VGGFeatures:
    """A frozen ``VGGFeatures`` from any supported file, its network and preprocessing taken from the file:

    * ``.h5`` / ``.hdf5``: a Keras ImageNet VGG-16/19 (Caffe preprocessing);
    * ``.safetensors`` with crdtool VGG metadata (``crdtool weights get vgg19``): as the metadata says;
    * otherwise (``.pth``/``.pt``, plain ``.safetensors``): a torchvision vgg16/vgg19 state dict, fed
      [0, 1] RGB as in the reference code.
    """
    from crdtool.models.checkpoints import read_safetensors, read_torch_state_dict

    if path is None or str(path) == "":
        raise CrdError(_missing_message("the perceptual loss needs VGG weights but no file is set"))
    path = Path(path).expanduser()
    if not path.is_file():
        raise CrdError(_missing_message(f"VGG weights not found at {path}"))
    preprocessing, scale = UNIT_RGB, 1.0
    if path.suffix.lower() in (".h5", ".hdf5"):
        config, state = read_keras_vgg(path)
        preprocessing, scale = CAFFE_BGR, 1.0 / 255.0
    elif path.suffix == ".safetensors":
        state, meta = read_safetensors(path)
        state = _torchvision_features(state, path)
        if meta.get("format") == VGG_FORMAT:
            config = CONFIGS.get(meta.get("network", ""))
            preprocessing = meta.get("preprocessing", "")
            if config is None or preprocessing not in PREPROCESSINGS:
                raise CrdError(f"{path}: unknown VGG network {meta.get('network')!r} or preprocessing "
                               f"{preprocessing!r} in its metadata")
            scale = float(json.loads(meta.get("feature_scale", "1.0")))
        else:
            config = _torchvision_config(state)
    else:
        state = _torchvision_features(read_torch_state_dict(path), path)
        config = _torchvision_config(state)
    model = VGGFeatures(config, preprocessing, scale, source=path.name)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected}  # layers past the last tap are never computed
    missing = sorted(set(expected) - set(state), key=_key_order)
    if missing:
        raise CrdError(f"{path} is not a {config.name} state dict: missing {missing[:4]}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CrdError(f"{path}: {key} has shape {tuple(value.shape)}, {config.name} expects "
                           f"{tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model


def load_vgg16(path: str | Path | None) -> VGGFeatures:
    """Older name of ``load_vgg`` (which also reads VGG-19 files)."""
    return load_vgg(path)


def _key_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1, key)


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix F F^T / (C*H*W) per image, in float32 (bf16 features would lose the small entries)."""
    n, c, h, w = f.shape
    f = f.float().reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


class PerceptualLoss(nn.Module):
    """Style and feature distances between student and teacher images in [-1, 1].

    ``forward(student, teacher) -> (style, feature)``, both UNWEIGHTED scalars:
    style = sum over the network's style layers of L1(Gram_s, Gram_t);
    feature = L1 of the feature layer (relu2_2 for both networks). The caller applies the CRD weights
    (1e4 for style, 10 for feature). The teacher's features are computed without gradient.
    """

    def __init__(self, vgg: VGGFeatures):
        super().__init__()
        self.vgg = vgg.requires_grad_(False).eval()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if student.shape != teacher.shape:
            raise CrdError(f"perceptual loss needs outputs of the same shape, got {tuple(student.shape)} "
                           f"and {tuple(teacher.shape)}")
        with torch.no_grad():
            ft = self.vgg(self.vgg.preprocess(teacher.detach()))
        fs = self.vgg(self.vgg.preprocess(student))
        config = self.vgg.config
        with torch.autocast(student.device.type, enabled=False):
            style = sum(F.l1_loss(gram(fs[k]), gram(ft[k])) for k in config.style_layers)
            feature = F.l1_loss(fs[config.feature_layer].float(), ft[config.feature_layer].float())
        return style, feature
