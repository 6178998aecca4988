"""Paired (pix2pix) dataset: root/{phase}/*, each image the side-by-side pair A|B."""

from __future__ import annotations

from pathlib import Path

import torch
from crdtool.data.base import LayoutDataset
from crdtool.data.splits import aligned_halves
from crdtool.data.transforms import apply_params, eval_transform, resolve_key, sample_rng

LAYOUT = "an aligned dataset needs root/train and root/val (or root/test) of side-by-side A|B images (pix2pix layout)"


class AlignedDataset(LayoutDataset):
    """Item i -> dict(A, B, A_path, B_path) with A the left half (BtoA: the right half).

    Both halves share one crop/flip draw (seeded by (seed, epoch, i)), so they stay registered.
    Unreadable files follow the same policy as ``UnalignedDataset``.
    """

    def __init__(self, root: str | Path, phase: str = "train", load_size: int = 286, crop_size: int = 256,
                 train: bool = True, seed: int = 0, direction: str = "AtoB", max_size: int | None = None,
                 crop_align: int = 1, flip: bool = True):
        super().__init__(root, phase, load_size, crop_size, train, seed, direction, max_size,
                         crop_align=crop_align, flip=flip)
        self.dir_AB = self.root / phase
        self.files = self._images(self.dir_AB, LAYOUT)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        epoch, i = resolve_key(key, self.epoch, len(self))
        ab, path = self.files.load(i)
        left, right = aligned_halves(ab)
        if self.direction == "BtoA":
            left, right = right, left
        if self.train:
            params = self.draw(sample_rng(self.seed, epoch, i))
            a, b = (apply_params(img, params, self.load_size, self.crop_size) for img in (left, right))
        else:
            a, b = eval_transform(left, self.crop_size), eval_transform(right, self.crop_size)
        return {"A": a, "B": b, "A_path": str(path), "B_path": str(path)}
