"""Perceptual (style + feature) loss on a frozen VGG-16, as in the CRD/OMGD reference code.

Weights come from a local file in torchvision's ``vgg16`` state-dict layout (for example the
ImageNet file ``vgg16-397923af.pth``); nothing is downloaded. Inputs are mapped from [-1, 1] to
[0, 1] and, as in the reference, NOT normalised with the ImageNet mean/std.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.errors import CrdError

# torchvision vgg16 "D" configuration up to conv4_3: channels, "M" = max-pool.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)
# Index (in torchvision's vgg16().features) of the ReLU after conv1_2, conv2_2, conv3_3, conv4_3.
LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
_IGNORED_CONVS = (24, 26, 28)  # conv5_x: present in torchvision files, never computed here


class VGG16Features(nn.Module):
    """``torchvision.models.vgg16().features[:23]``: same module indices, so the same state-dict keys
    (``features.0.weight`` ... ``features.21.bias``). Frozen; forward stops after relu4_3."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG16Features":
        return super().train(False)  # always frozen (no dropout/BN here, but keep it explicit)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        by_index = {i: name for name, i in LAYERS.items()}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in by_index:
                out[by_index[i]] = x
        return out


def _missing_message(problem: str) -> str:
    return (f"{problem}: provide torchvision's ImageNet vgg16 state dict (e.g. vgg16-397923af.pth) and set "
            "its path in the recipe as loss.vgg_weights, or turn the perceptual loss off with "
            "loss.vgg_weights = \"\" (or set the perceptual loss weights to 0)")


def _features_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Keep the ``features.N.*`` entries this module has (bare ``N.*`` keys, as saved from
    ``vgg16().features``, are accepted too); drop the classifier and conv5."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if not key.startswith("features."):
            if key.split(".", 1)[0].isdigit():
                key = "features." + key
            else:
                continue  # classifier.* and the like
        index = int(key.split(".")[1]) if key.split(".")[1].isdigit() else -1
        if index in _IGNORED_CONVS:
            continue
        out[key] = value
    if not out:
        raise CrdError(f"{path} holds no VGG-16 'features.*' weights; expected a torchvision vgg16 state dict")
    return out


def load_vgg16(path: str | Path | None) -> VGG16Features:
    """Frozen ``VGG16Features`` from a torchvision vgg16 state dict (.pth/.pt via
    ``torch.load(weights_only=True)``, or .safetensors)."""
    from crdtool.models.checkpoints import read_safetensors, read_torch_state_dict

    if path is None or str(path) == "":
        raise CrdError(_missing_message("the perceptual loss needs VGG-16 weights but no file is set"))
    path = Path(path).expanduser()
    if not path.is_file():
        raise CrdError(_missing_message(f"VGG-16 weights not found at {path}"))
    if path.suffix == ".safetensors":
        state, _ = read_safetensors(path)
    else:
        state = read_torch_state_dict(path)
    model = VGG16Features()
    state = _features_state(state, path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state), key=_key_order)
    unexpected = sorted(set(state) - set(expected), key=_key_order)
    if missing or unexpected:
        raise CrdError(f"{path} is not a torchvision vgg16 state dict: missing {missing[:4]}, "
                       f"unexpected {unexpected[:4]}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CrdError(f"{path}: {key} has shape {tuple(value.shape)}, vgg16 expects {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model


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
    style = sum over relu1_2, relu2_2, relu3_3, relu4_3 of L1(Gram_s, Gram_t);
    feature = L1(relu2_2_s, relu2_2_t). The caller applies the CRD weights (1e4 for style,
    10 for feature). The teacher's features are computed without gradient.
    """

    def __init__(self, vgg: VGG16Features):
        super().__init__()
        self.vgg = vgg.requires_grad_(False).eval()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if student.shape != teacher.shape:
            raise CrdError(f"perceptual loss needs outputs of the same shape, got {tuple(student.shape)} "
                           f"and {tuple(teacher.shape)}")
        with torch.no_grad():
            ft = self.vgg((teacher.detach() + 1) / 2)
        fs = self.vgg((student + 1) / 2)
        with torch.autocast(student.device.type, enabled=False):
            style = sum(F.l1_loss(gram(fs[k]), gram(ft[k])) for k in LAYERS)
            feature = F.l1_loss(fs["relu2_2"].float(), ft["relu2_2"].float())
        return style, feature
