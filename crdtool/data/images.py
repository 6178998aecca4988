"""Safe image decoding and folder listing. A bad file is reported by path, never a crash mid-epoch."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from crdtool.errors import CrdError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


class BadImageError(CrdError):
    """An unreadable, truncated or non-image file; ``path`` names it."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        super().__init__(f"cannot read image {path}: {reason}")


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly in ``folder``; a missing or empty folder is a ``CrdError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CrdError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise CrdError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def load_image(path: str | Path) -> Image.Image:
    """Decode fully (so truncation is caught here, not later) and convert to RGB."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadImageError(path, str(e) or type(e).__name__) from e


def iter_readable(files: Iterable[str | Path], n: int | None = None) -> Iterator[tuple[Path, Image.Image]]:
    """(path, RGB image) for the first ``n`` files that decode; unreadable ones are skipped."""
    count = 0
    for p in files:
        if n is not None and count >= n:
            return
        try:
            img = load_image(p)
        except BadImageError:
            continue
        count += 1
        yield Path(p), img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [-1, 1], the generators' value range."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (N, 3, H, W) in [-1, 1] -> uint8 HWC / NHWC, rounding like the reference."""
    t = t.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    return (t.permute(1, 2, 0) if t.dim() == 3 else t.permute(0, 2, 3, 1)).numpy()


def load_folder_tensor(folder: str | Path, size: int | tuple[int, int], n: int | None = None,
                       files: list[Path] | None = None) -> torch.Tensor:
    """The first ``n`` readable images of a folder, resized (bicubic) to ``size``, as (N, 3, H, W) in [-1, 1].

    Used for export verification, INT8 calibration and benchmark inputs. Unreadable files are skipped;
    if none is readable the error names the folder.
    """
    h, w = (size, size) if isinstance(size, int) else size
    out = [to_tensor(img.resize((w, h), Image.BICUBIC))
           for _, img in iter_readable(files if files is not None else list_images(folder), n)]
    if not out:
        raise CrdError(f"no readable images in {folder}")
    return torch.stack(out)


class BadImageWarning(UserWarning):
    """Emitted once per unreadable file that a dataset skipped."""


class FallbackImages:
    """Image ``i`` of a fixed file list; an unreadable file is recorded (once) and the next readable one
    (i+1, i+2, ... wrapping) is used instead, so one bad file never ends an epoch and the substitute is
    deterministic. ``bad_files`` may be a list shared with the owning dataset.
    """

    def __init__(self, paths: list[Path], folder: str | Path, bad_files: list[str] | None = None):
        self.paths = list(paths)
        self.folder = Path(folder)
        self.bad_files = bad_files if bad_files is not None else []
        self._bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[Image.Image, Path]:
        n = len(self.paths)
        for k in range(n):
            path = self.paths[(index + k) % n]
            if path in self._bad:
                continue
            try:
                return load_image(path), path
            except BadImageError as e:
                self._bad.add(path)
                self.bad_files.append(str(path))
                warnings.warn(f"skipping unreadable image ({e})", BadImageWarning, stacklevel=2)
        raise CrdError(f"no readable images in {self.folder}")
