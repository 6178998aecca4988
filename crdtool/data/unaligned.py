"""Unpaired (CycleGAN) dataset: root/{phase}A and root/{phase}B, as in pytorch-CycleGAN-and-pix2pix."""

from __future__ import annotations

from pathlib import Path

import torch
from crdtool.data.base import LayoutDataset
from crdtool.data.transforms import (apply_params, eval_transform, resolve_key, sample_rng,
                                     train_transform)

LAYOUT = "an unaligned dataset needs root/trainA, root/trainB, root/testA, root/testB (CycleGAN layout)"


class UnalignedDataset(LayoutDataset):
    """Item i -> dict(A, B, A_path, B_path), and in training A_crop: the (y, x, flip) of A's random crop, so a
    frozen teacher's cached output of the whole image can be cut the same way. A is the input domain (BtoA
    swaps the folders).

    Length is max(len A, len B) like the reference; A cycles with i, B is drawn at random in training
    (from the sample's own RNG, seeded by (seed, epoch, i)) and is i % len(B) otherwise.
    Unreadable files are listed in ``bad_files`` and replaced by the next readable image. With loader
    workers, each worker keeps its own ``bad_files`` copy (the warnings still appear).
    """

    def __init__(self, root: str | Path, phase: str = "train", load_size: int = 286, crop_size: int = 256,
                 train: bool = True, seed: int = 0, direction: str = "AtoB", max_size: int | None = None,
                 crop_align: int = 1, flip: bool = True):
        super().__init__(root, phase, load_size, crop_size, train, seed, direction, max_size,
                         crop_align=crop_align, flip=flip)
        src, dst = ("A", "B") if direction == "AtoB" else ("B", "A")
        self.dir_A, self.dir_B = self.root / f"{phase}{src}", self.root / f"{phase}{dst}"
        self.files_A = self._images(self.dir_A, LAYOUT)
        self.files_B = self._images(self.dir_B, LAYOUT)

    def __len__(self) -> int:
        return max(len(self.files_A), len(self.files_B))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        epoch, i = resolve_key(key, self.epoch, len(self))
        if self.train:
            rng = sample_rng(self.seed, epoch, i)
            b_index = rng.randrange(len(self.files_B))
            img_a, path_a = self.files_A.load(i % len(self.files_A))
            img_b, path_b = self.files_B.load(b_index)
            params = self.draw(rng)  # the draws train_transform makes
            a = apply_params(img_a, params, self.load_size, self.crop_size)
            b = train_transform(img_b, rng, self.load_size, self.crop_size)
            return {"A": a, "B": b, "A_path": str(path_a), "B_path": str(path_b),
                    "A_crop": torch.tensor([params.y, params.x, int(params.flip)])}
        img_a, path_a = self.files_A.load(i % len(self.files_A))
        img_b, path_b = self.files_B.load(i % len(self.files_B))
        a, b = eval_transform(img_a, self.crop_size), eval_transform(img_b, self.crop_size)
        return {"A": a, "B": b, "A_path": str(path_a), "B_path": str(path_b)}
