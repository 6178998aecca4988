"""Paired (pix2pix) dataset: root/{phase}/*, each image the side-by-side pair A|B."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from crdtool.data.images import FallbackImages, list_images
from crdtool.data.transforms import check_direction, check_sizes, pair_transform, resolve_key, sample_rng
from crdtool.errors import CrdError

LAYOUT = "an aligned dataset needs root/train and root/val (or root/test) of side-by-side A|B images (pix2pix layout)"


class AlignedDataset(Dataset):
    """Item i -> dict(A, B, A_path, B_path) with A the left half (BtoA: the right half).

    Both halves share one crop/flip draw (seeded by (seed, epoch, i)), so they stay registered.
    Unreadable files follow the same policy as ``UnalignedDataset``.
    """

    def __init__(self, root: str | Path, phase: str = "train", load_size: int = 286, crop_size: int = 256,
                 train: bool = True, seed: int = 0, direction: str = "AtoB", max_size: int | None = None):
        check_sizes(load_size, crop_size)
        check_direction(direction)
        if max_size is not None and max_size < 1:
            raise CrdError(f"max_size must be >= 1, got {max_size}")
        self.root = Path(root)
        self.phase, self.load_size, self.crop_size = phase, load_size, crop_size
        self.train, self.seed, self.direction = train, seed, direction
        self.epoch = 0
        self.bad_files: list[str] = []
        self.dir_AB = self.root / phase
        if not self.dir_AB.is_dir():
            raise CrdError(f"dataset folder not found: {self.dir_AB}; {LAYOUT}")
        files = list_images(self.dir_AB)
        self.files = FallbackImages(files[:max_size] if max_size is not None else files, self.dir_AB,
                                    self.bad_files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        epoch, i = resolve_key(key, self.epoch, len(self))
        ab, path = self.files.load(i)
        w, h = ab.size
        half = w // 2
        left, right = ab.crop((0, 0, half, h)), ab.crop((half, 0, w, h))
        if self.direction == "BtoA":
            left, right = right, left
        rng = sample_rng(self.seed, epoch, i) if self.train else None
        a, b = pair_transform(left, right, rng, self.load_size, self.crop_size, train=self.train)
        return {"A": a, "B": b, "A_path": str(path), "B_path": str(path)}
