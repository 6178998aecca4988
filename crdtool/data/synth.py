"""Tiny synthetic datasets for tests, the quickstart and CI: no download, deterministic bytes.

unpaired (CycleGAN layout, a "horse -> zebra" analogue): domain A = plain-coloured ellipses and
rectangles on a soft background; domain B = the same kind of shapes filled with stripes.
paired (pix2pix layout, an "edges -> shoes" analogue): A = the shape's edge map (white on black),
B = the filled, shaded shape on white; stored side by side as A|B.

The whole dataset is generated in a temporary sibling folder and renamed into place, so an
interrupted run leaves nothing half-made; ``synth.json`` records the parameters so an existing
folder that matches is reused instead of regenerated.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from crdtool.errors import CrdError
from crdtool.fileio import ensure_writable_dir

SYNTH_VERSION = 1
MANIFEST = "synth.json"
Kind = Literal["unpaired", "paired"]
_SPLIT_CODES = {"trainA": 1, "trainB": 2, "testA": 3, "testB": 4, "train": 5, "val": 6}


def split_counts(kind: str, count: int) -> dict[str, int]:
    """Images per folder: ``count`` for training, max(4, count // 4) for evaluation."""
    n_eval = max(4, count // 4)
    if kind == "unpaired":
        return {"trainA": count, "trainB": count, "testA": n_eval, "testB": n_eval}
    return {"train": count, "val": n_eval}


def _manifest(kind: str, size: int, count: int, seed: int) -> dict:
    return {"version": SYNTH_VERSION, "kind": kind, "layout": "unaligned" if kind == "unpaired" else "aligned",
            "size": size, "count": count, "seed": seed, "splits": split_counts(kind, count)}


def synth_matches(out: str | Path, kind: str = "unpaired", size: int = 64, count: int = 64, seed: int = 0) -> bool:
    """True when ``out`` already holds a complete synthetic dataset made with these parameters."""
    out = Path(out)
    try:
        found = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if found != _manifest(kind, size, count, seed):
        return False
    return all((out / name).is_dir() and sum(1 for p in (out / name).iterdir() if p.suffix == ".png") == n
               for name, n in split_counts(kind, count).items())


# ---- drawing ---------------------------------------------------------------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)  # x, y in (0, 1)


def _shape_mask(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, big: bool = False) -> np.ndarray:
    """A random ellipse, rectangle (both rotated) or triangle."""
    kind = rng.integers(3)
    lo, hi = (0.22, 0.38) if big else (0.12, 0.30)
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    if kind == 2:
        ang = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, size=3)
        r = rng.uniform(lo * 1.3, hi * 1.3, size=3)
        px, py = cx + r * np.cos(ang), cy + r * np.sin(ang)
        mask = np.ones_like(x, dtype=bool)
        for k in range(3):  # inside = same side of each edge as the opposite vertex
            x0, y0, x1, y1 = px[k], py[k], px[(k + 1) % 3], py[(k + 1) % 3]
            ox, oy = px[(k + 2) % 3], py[(k + 2) % 3]
            side = (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)
            mask &= side * ((x1 - x0) * (oy - y0) - (y1 - y0) * (ox - x0)) >= 0
        return mask
    rx, ry = rng.uniform(lo, hi, size=2)
    t = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(t) + (y - cy) * np.sin(t)
    v = -(x - cx) * np.sin(t) + (y - cy) * np.cos(t)
    if kind == 0:
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    return (np.abs(u) <= rx * 0.85) & (np.abs(v) <= ry * 0.85)


def _background(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """Sky-ish top blending into grass-ish bottom, with mild noise: the same for both domains."""
    top = rng.uniform([90, 130, 170], [150, 190, 235])
    bottom = rng.uniform([50, 100, 40], [110, 160, 90])
    img = top * (1 - y[..., None]) + bottom * y[..., None]
    return img + rng.normal(0, 4, size=img.shape)


def _unpaired_image(rng: np.random.Generator, size: int, striped: bool) -> np.ndarray:
    x, y = _grid(size)
    img = _background(rng, y)
    for _ in range(rng.integers(1, 3)):
        mask = _shape_mask(rng, x, y)
        shade = (0.8 + 0.3 * (1 - y))[..., None]
        if striped:
            t, period = rng.uniform(0, np.pi), rng.uniform(max(3.0, size / 12), max(4.0, size / 6)) / size
            stripes = ((x * np.cos(t) + y * np.sin(t)) / period) % 1.0 < 0.5
            fill = np.where(stripes[..., None], rng.uniform(15, 45), rng.uniform(215, 250)) * np.ones(3)
        else:
            fill = rng.uniform([120, 60, 20], [200, 130, 80]) * np.ones((size, size, 3))
        img = np.where(mask[..., None], fill * shade, img)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _edges(mask: np.ndarray, width: int) -> np.ndarray:
    """Boundary pixels: the mask minus its erosion (4-neighbourhood, ``width`` times)."""
    inner = mask.copy()
    for _ in range(width):
        p = np.pad(inner, 1, constant_values=False)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _paired_image(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _grid(size)
    mask = _shape_mask(rng, x, y, big=True)
    light = rng.uniform(0, 2 * np.pi)
    shade = np.clip(0.75 + 0.45 * ((x - 0.5) * np.cos(light) + (y - 0.5) * np.sin(light)) * 2, 0.35, 1.15)
    colour = rng.uniform([30, 30, 30], [230, 230, 230])
    b = np.where(mask[..., None], colour * shade[..., None], 255.0)
    a = np.repeat(_edges(mask, max(1, size // 64))[..., None] * 255.0, 3, axis=2)
    return np.clip(np.concatenate([a, b], axis=1), 0, 255).round().astype(np.uint8)


def _write_split(folder: Path, kind: str, split: str, n: int, size: int, seed: int) -> None:
    folder.mkdir()
    for i in range(n):
        rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], i])
        arr = _unpaired_image(rng, size, striped=split.endswith("B")) if kind == "unpaired" \
            else _paired_image(rng, size)
        Image.fromarray(arr, "RGB").save(folder / f"{i:04d}.png", format="PNG", optimize=False)


# ---- entry point -----------------------------------------------------------------------------------

def make_synthetic_dataset(out: str | Path, kind: Kind = "unpaired", size: int = 64, count: int = 64,
                           seed: int = 0) -> Path:
    """Write (or reuse, if ``synth.json`` matches) a synthetic dataset at ``out``; returns ``out``.

    An existing ``out`` is replaced only if it is empty or was made by this function.
    """
    if kind not in ("unpaired", "paired"):
        raise CrdError(f"synthetic dataset kind must be 'unpaired' or 'paired', got {kind!r}")
    if size < 8:
        raise CrdError(f"synthetic image size must be >= 8, got {size}")
    if count < 1:
        raise CrdError(f"synthetic image count must be >= 1, got {count}")
    out = Path(out)
    if synth_matches(out, kind, size, count, seed):
        return out
    if out.exists() and not out.is_dir():
        raise CrdError(f"cannot write a dataset to {out}: it is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise CrdError(f"refusing to overwrite {out}: it is not empty and has no {MANIFEST} "
                       f"(not made by `crdtool data synth`)")
    ensure_writable_dir(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the dataset should look like any other folder
    old: Path | None = None
    try:
        for split, n in split_counts(kind, count).items():
            _write_split(tmp / split, kind, split, n, size, seed)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(kind, size, count, seed), indent=2, sort_keys=True) + "\n")
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "d")
        os.replace(tmp, out)
    except OSError as e:
        if old is not None and (old / "d").is_dir() and not out.exists():
            os.replace(old / "d", out)  # put the previous dataset back
        raise CrdError(f"cannot write synthetic dataset to {out}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def smooth_noise_images(n: int, size: int, channels: int = 3, seed: int = 0) -> "torch.Tensor":
    """Deterministic image-like inputs in [-1, 1]: smooth low-frequency noise plus a little grain.

    The last resort for export verification, INT8 calibration and benchmark inputs when no real image
    is at hand; never zeros, since some kernels (denormals, sparse paths) run at other speeds on
    constant inputs.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 6, 6, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.randn(n, channels, size, size, generator=g)).clamp_(-1, 1)
