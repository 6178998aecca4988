"""What the unaligned and aligned datasets share: validated settings, the epoch, bad-file bookkeeping."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from crdtool.data.images import FallbackImages, list_images
from crdtool.data.transforms import CropFlip, check_direction, check_sizes, sample_params
from crdtool.errors import CrdError


class LayoutDataset(Dataset):
    def __init__(self, root: str | Path, phase: str, load_size: int, crop_size: int, train: bool, seed: int,
                 direction: str, max_size: int | None, *, crop_align: int = 1, flip: bool = True):
        check_sizes(load_size, crop_size)
        if crop_align < 1:
            raise CrdError(f"data.crop_align must be >= 1, got {crop_align}")
        check_direction(direction)
        if max_size is not None and max_size < 1:
            raise CrdError(f"max_size must be >= 1, got {max_size}")
        self.root = Path(root)
        self.phase, self.load_size, self.crop_size = phase, load_size, crop_size
        self.train, self.seed, self.direction, self.max_size = train, seed, direction, max_size
        self.crop_align, self.flip = crop_align, flip
        self.epoch = 0
        self.bad_files: list[str] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self, rng) -> CropFlip:
        """One training sample's crop and flip, with this dataset's alignment and flip setting."""
        return sample_params(rng, self.load_size, self.crop_size, self.crop_align, self.flip)

    def _images(self, folder: Path, layout: str) -> FallbackImages:
        """The folder's images (the first ``max_size``), read with the shared bad-file policy."""
        if not folder.is_dir():
            raise CrdError(f"dataset folder not found: {folder}; {layout}")
        files = list_images(folder)
        return FallbackImages(files[:self.max_size] if self.max_size is not None else files, folder, self.bad_files)
