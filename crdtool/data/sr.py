"""Super-resolution data: HR image folders, LR made by a MATLAB-exact bicubic downscale (or read from
an LR folder beside them), random aligned patches for training and whole images for evaluation.

Layout of one set (what SR benchmarks distribute)::

    Set5/HR/baby.png                 HR images (or the images directly in the folder)
    Set5/LR_bicubic/X4/babyx4.png    optional: LR files; without them LR is computed from HR

Why our own bicubic: SR papers make LR with MATLAB's ``imresize`` (antialiased cubic kernel, a = -0.5,
symmetric edge padding, uint8 rounding after each axis); PIL's and torch's bicubic differ from it by
up to several grey levels, which shifts PSNR by tenths of a dB. ``imresize`` reproduces the LR files
of Set5 / Set14 bit for bit (a test checks this).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from crdtool.data.images import list_images
from crdtool.errors import CrdError

# ---------------------------------------------------------------------------------- MATLAB imresize


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """The (out_len, in_len) float64 matrix of MATLAB's ``imresize`` bicubic along one axis.

    Downscaling widens the kernel by 1/scale (antialiasing, MATLAB's default); out-of-range taps
    are folded back symmetrically, as MATLAB pads.
    """
    kernel_width = 4.0 / scale if scale < 1 else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    cols = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    m = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(m, (np.repeat(np.arange(out_len), taps), cols.ravel()), w.ravel())
    return m


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's double -> uint8: clamp, round half up (away from zero for these non-negative values)."""
    return np.floor(np.clip(x, 0, 255) + 0.5).astype(np.uint8)


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` of a uint8 HxW or HxWxC array: rows first, then columns,
    rounded to uint8 after each axis. Output sides are ``ceil(side * scale)``, as in MATLAB."""
    if img.dtype != np.uint8:
        raise TypeError(f"imresize expects uint8, got {img.dtype}")
    h, w = img.shape[:2]
    oh, ow = int(math.ceil(h * scale - 1e-9)), int(math.ceil(w * scale - 1e-9))
    x = img.astype(np.float64)
    x = _round_uint8(np.tensordot(resize_matrix(h, oh, scale), x, axes=(1, 0)))
    x = np.tensordot(resize_matrix(w, ow, scale), x.astype(np.float64), axes=(1, 1))  # (ow, oh[, C])
    return _round_uint8(np.swapaxes(x, 0, 1))


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of ``scale`` (SR evaluation convention)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def bicubic_down(hr: np.ndarray, scale: int) -> np.ndarray:
    """LR of an HR uint8 image the way benchmarks make it: mod-crop, then MATLAB bicubic by 1/scale."""
    return imresize(mod_crop(hr, scale), 1.0 / scale)


# ---------------------------------------------------------------------------------- files


def read_uint8(path: str | Path, keep_grey: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB, or HxW for a greyscale file when ``keep_grey`` (it is scored on its own channel)."""
    try:
        with Image.open(path) as im:
            if keep_grey and im.mode in ("L", "I;16", "I"):
                return np.asarray(im.convert("L"))
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise CrdError(f"cannot read image {path}: {e}") from None


def hr_folder(root: str | Path) -> Path:
    """``root/HR`` when it exists, else ``root`` itself."""
    root = Path(root)
    return root / "HR" if (root / "HR").is_dir() else root


def lr_file(root: str | Path, hr_path: Path, scale: int) -> Path | None:
    """The distributed LR file of an HR image (``LR_bicubic/X4/<stem>x4.png``), if present."""
    folder = Path(root) / "LR_bicubic" / f"X{scale}"
    for name in (f"{hr_path.stem}x{scale}{hr_path.suffix}", hr_path.name):
        if (folder / name).is_file():
            return folder / name
    return None


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 (or HxW, replicated to 3 channels) -> float 3xHxW in [0, 1], the models' input range."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float().div_(255.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float 3xHxW in [0, 1] -> uint8 HxWx3, clamped and rounded as images are saved."""
    return t.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


# ---------------------------------------------------------------------------------- evaluation set


@dataclass
class SRPair:
    name: str
    hr: np.ndarray  # uint8, mod-cropped; HxW for a greyscale image
    lr: np.ndarray  # uint8 HxWx3 (a greyscale LR replicated): what a model sees
    path: Path | None = None  # the HR file (a cache key for outputs computed from it)


def load_eval_set(root: str | Path, scale: int, max_images: int | None = None,
                  use_lr_files: bool = True) -> list[SRPair]:
    """Whole images of one benchmark set: HR mod-cropped, LR from its LR folder or computed bicubic."""
    files = list_images(hr_folder(root))[:max_images]
    pairs = []
    for f in files:
        hr = mod_crop(read_uint8(f, keep_grey=True), scale)
        lr_path = lr_file(root, f, scale) if use_lr_files else None
        lr = read_uint8(lr_path, keep_grey=True) if lr_path is not None else imresize(hr, 1.0 / scale)
        if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
            raise CrdError(f"{lr_path}: LR size {lr.shape[:2]} x{scale} does not match HR {f} {hr.shape[:2]}")
        if lr.ndim == 2:
            lr = np.repeat(lr[:, :, None], 3, axis=2)
        pairs.append(SRPair(f.stem, hr, lr, f))
    return pairs


# ---------------------------------------------------------------------------------- training patches


class SRPatches:
    """Random aligned (LR, HR) patches from HR folders; LR computed once per image and kept in memory.

    ``batch(step, batch_size)`` is a pure function of (seed, step): a run resumed at step k draws the
    batches an uninterrupted run would have. Augmentation: horizontal flip, vertical flip, transpose
    (the eight dihedral variants, as EDSR / BasicSR train).
    """

    def __init__(self, folders: Sequence[str | Path], scale: int, patch_size: int, seed: int = 0,
                 max_images: int | None = None):
        if patch_size % scale:
            raise CrdError(f"data.crop_size {patch_size} (the HR patch side) must be a multiple of data.scale {scale}")
        self.scale, self.patch, self.seed = scale, patch_size, seed
        self.files: list[Path] = []
        for folder in folders:
            self.files += list_images(hr_folder(folder))
        self.files = self.files[:max_images]
        self._pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.files)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(HR mod-cropped RGB, LR) of image ``i``; computed on first use."""
        if i not in self._pairs:
            hr = mod_crop(read_uint8(self.files[i]), self.scale)
            if min(hr.shape[:2]) < self.patch:
                raise CrdError(f"{self.files[i]} ({hr.shape[1]}x{hr.shape[0]}) is smaller than data.crop_size "
                               f"{self.patch}")
            self._pairs[i] = (hr, imresize(hr, 1.0 / self.scale))
        return self._pairs[i]

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int, int]]]:
        """(LR Bx3xpxp, HR Bx3xPxP, [(image, top, left, aug)]) for training step ``step``."""
        rng = np.random.default_rng([self.seed, step])
        lrs, hrs, where = [], [], []
        p = self.patch // self.scale
        for _ in range(batch_size):
            i = int(rng.integers(len(self.files)))
            hr, lr = self.pair(i)
            top = int(rng.integers(lr.shape[0] - p + 1))
            left = int(rng.integers(lr.shape[1] - p + 1))
            aug = int(rng.integers(8))
            lrs.append(augment(lr[top:top + p, left:left + p], aug))
            hrs.append(augment(hr[top * self.scale:(top + p) * self.scale, left * self.scale:(left + p) * self.scale], aug))
            where.append((i, top, left, aug))
        return (torch.stack([to_tensor(x) for x in lrs]), torch.stack([to_tensor(x) for x in hrs]), where)


def augment(img: np.ndarray, aug: int) -> np.ndarray:
    """One of the 8 dihedral variants: bit 0 h-flip, bit 1 v-flip, bit 2 transpose."""
    if aug & 1:
        img = img[:, ::-1]
    if aug & 2:
        img = img[::-1]
    if aug & 4:
        img = np.swapaxes(img, 0, 1)
    return img


def augment_tensor(t: torch.Tensor, aug: int) -> torch.Tensor:
    """``augment`` for a CxHxW tensor (e.g. a cached teacher output patch)."""
    if aug & 1:
        t = t.flip(-1)
    if aug & 2:
        t = t.flip(-2)
    if aug & 4:
        t = t.transpose(-1, -2)
    return t
