"""Train/eval image transforms with explicit randomness.

Every random choice comes from an RNG the caller passes in; datasets seed it from
(seed, epoch, index) with ``sample_rng``, so a sample is a pure function of those three numbers:
runs are reproducible and a resumed run sees exactly the samples it would have seen, whatever the
number of loader workers. Geometry follows the reference 'resize_and_crop': square bicubic resize
to ``load_size``, random ``crop_size`` crop, random horizontal flip.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from PIL import Image

from crdtool.data.images import to_tensor
from crdtool.errors import CrdError


@dataclass(frozen=True)
class CropFlip:
    """One draw of the random geometry: crop offset (in the resized image) and flip."""

    x: int
    y: int
    flip: bool


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """An RNG owned by one sample; str seeds are hashed (sha512), so this is stable across processes."""
    return random.Random(f"crdtool-sample:{int(seed)}:{int(epoch)}:{int(index)}")


def check_sizes(load_size: int, crop_size: int) -> None:
    """Fail early (one line) instead of producing padded or empty crops."""
    if crop_size < 1 or load_size < 1:
        raise CrdError(f"load_size ({load_size}) and crop_size ({crop_size}) must be positive")
    if load_size < crop_size:
        raise CrdError(f"load_size ({load_size}) must be >= crop_size ({crop_size})")


def sample_params(rng: random.Random, load_size: int, crop_size: int, align: int = 1, flip: bool = True) -> CropFlip:
    """Draw crop offset and flip; the draw order (x, y, flip) is fixed so results are stable.

    ``align`` rounds the offsets down to multiples of it, and ``flip=False`` keeps every crop unflipped
    (the draws are made all the same, so other settings' samples do not move). Both matter when the
    target is cut from a teacher's output of the whole image: a generator's output carries a texture
    tied to its stride-2 upsampling grid, which a crop at an offset off that grid, or a mirrored crop,
    shifts against the student's own grid."""
    slack = max(0, load_size - crop_size)
    x, y, f = rng.randint(0, slack), rng.randint(0, slack), rng.random() > 0.5
    return CropFlip(x - x % align, y - y % align, f and flip)


def apply_params(img: Image.Image, params: CropFlip, load_size: int, crop_size: int) -> torch.Tensor:
    """Resize (bicubic, square), crop, flip, then to a (3, crop, crop) tensor in [-1, 1]."""
    if img.size != (load_size, load_size):
        img = img.resize((load_size, load_size), Image.BICUBIC)
    if load_size != crop_size:
        img = img.crop((params.x, params.y, params.x + crop_size, params.y + crop_size))
    if params.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor(img)


def train_transform(img: Image.Image, rng: random.Random, load_size: int, crop_size: int) -> torch.Tensor:
    """Resize to load_size, random crop_size crop, random horizontal flip."""
    return apply_params(img, sample_params(rng, load_size, crop_size), load_size, crop_size)


def eval_transform(img: Image.Image, crop_size: int) -> torch.Tensor:
    """Resize to crop_size, no crop, no flip."""
    return apply_params(img, CropFlip(0, 0, False), crop_size, crop_size)


def check_direction(direction: str) -> str:
    if direction not in ("AtoB", "BtoA"):
        raise CrdError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
    return direction


def resolve_key(key: int | tuple[int, int], default_epoch: int, length: int) -> tuple[int, int]:
    """Dataset keys are ``i`` (current epoch) or ``(epoch, i)``; the latter lets a sampler pin the epoch,
    so a loader built for one epoch never depends on later ``set_epoch`` calls."""
    epoch, index = key if isinstance(key, tuple) else (default_epoch, key)
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"sample index {index} out of range for {length} samples")
    return int(epoch), index
