"""A folder of input photos and nothing else: what a user of a pretrained teacher usually has.

There are no target-domain images: the teacher's outputs are the targets. The test split is the
``test/`` subfolder when there is one (the folder's own images are then all for training), else
the last ``test_fraction`` of the files in name order (at least one image) is held out.
Items carry the path and the random crop/flip, so a cached teacher output of the whole image can be
cut the same way (``crdtool.train.teacher_cache.crop_pair``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from crdtool.data.base import LayoutDataset
from crdtool.data.images import FallbackImages, list_images
from crdtool.data.transforms import CropFlip, apply_params, resolve_key, sample_rng
from crdtool.errors import CrdError

LAYOUT = "a folder layout needs root/ with images (and optionally root/test/ with held-out ones)"
TEST_FOLDER = "test"


def folder_split(root: str | Path, phase: str, test_fraction: float = 0.1) -> tuple[list[Path], str]:
    """(files, how they were chosen) of the ``phase`` ("train" or "test") of a folder of images."""
    root = Path(root)
    if not root.is_dir():
        raise CrdError(f"dataset folder not found: {root}; {LAYOUT}")
    if not 0 < test_fraction < 1:
        raise CrdError(f"data.test_fraction must be between 0 and 1, got {test_fraction}")
    files = list_images(root)
    if (root / TEST_FOLDER).is_dir():
        if phase == "train":
            return files, f"all {len(files)} images of {root}"
        test = list_images(root / TEST_FOLDER)
        return test, f"the {len(test)} images of {root / TEST_FOLDER}"
    n_test = max(1, math.ceil(test_fraction * len(files)))
    if n_test >= len(files):
        raise CrdError(f"{root} has {len(files)} image(s): too few to hold out a test split; add a "
                       f"{TEST_FOLDER}/ subfolder or more images")
    if phase == "train":
        return files[:-n_test], f"the first {len(files) - n_test} of {len(files)} images of {root} (by name)"
    return files[-n_test:], f"the last {n_test} of {len(files)} images of {root} (by name, held out)"


class FolderDataset(LayoutDataset):
    """Item i -> dict(A, A_path, A_crop): the image, its path and the (x, y, flip) of its random crop."""

    def __init__(self, root: str | Path, phase: str = "train", load_size: int = 286, crop_size: int = 256,
                 train: bool = True, seed: int = 0, direction: str = "AtoB", max_size: int | None = None,
                 test_fraction: float = 0.1, crop_align: int = 1, flip: bool = True):
        super().__init__(root, phase, load_size, crop_size, train, seed, direction, max_size,
                         crop_align=crop_align, flip=flip)
        files, self.description = folder_split(self.root, phase, test_fraction)
        if max_size is not None:
            files = files[:max_size]
        self.files_A = FallbackImages(files, self.root, self.bad_files)

    def __len__(self) -> int:
        return len(self.files_A)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        epoch, i = resolve_key(key, self.epoch, len(self))
        img, path = self.files_A.load(i)
        if self.train:
            params, size = self.draw(sample_rng(self.seed, epoch, i)), self.load_size
        else:
            params, size = CropFlip(0, 0, False), self.crop_size
        a = apply_params(img, params, size, self.crop_size)
        return {"A": a, "A_path": str(path), "A_crop": torch.tensor([params.y, params.x, int(params.flip)])}
