"""Datasets (CycleGAN unaligned, pix2pix aligned, a plain folder of photos), a reproducible loader, and synthetic data.

Determinism contract: sample i of epoch e is a pure function of (seed, e, i), and the loader's order
is a pure function of (seed, e); so resuming mid-epoch means skipping k batches, nothing else.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from crdtool.data.aligned import AlignedDataset
from crdtool.data.folder import FolderDataset, folder_split
from crdtool.data.splits import TestSplit, find_test_split
from crdtool.data.synth import make_synthetic_dataset, synth_matches
from crdtool.data.unaligned import UnalignedDataset
from crdtool.errors import CrdError

Layout = Literal["unaligned", "aligned", "folder"]
LAYOUTS = ("unaligned", "aligned", "folder")

__all__ = ["AlignedDataset", "UnalignedDataset", "FolderDataset", "folder_split", "EpochBatchSampler",
           "build_dataset", "test_phase", "TestSplit",
           "find_test_split",
           "make_loader", "order_seed", "make_synthetic_dataset", "synth_matches", "LAYOUTS"]


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise CrdError(f"dataset layout must be 'unaligned', 'aligned' or 'folder', got {layout!r}")


def build_dataset(layout: Layout, root: str | Path, phase: str = "train", *, load_size: int = 286,
                  crop_size: int = 256, train: bool | None = None, seed: int = 0, direction: str = "AtoB",
                  max_size: int | None = None, test_fraction: float = 0.1, crop_align: int = 1, flip: bool = True
                  ) -> UnalignedDataset | AlignedDataset | FolderDataset:
    """One entry point for every layout; ``train`` defaults to ``phase == "train"``; ``test_fraction``
    is the held-out share of a folder layout without a test/ subfolder; ``crop_align`` and ``flip`` shape the
    training crops (``transforms.sample_params``)."""
    _check_layout(layout)
    train = (phase == "train") if train is None else train
    if layout == "folder":
        return FolderDataset(root, phase=phase, load_size=load_size, crop_size=crop_size, train=train, seed=seed,
                             direction=direction, max_size=max_size, test_fraction=test_fraction,
                             crop_align=crop_align, flip=flip)
    cls = UnalignedDataset if layout == "unaligned" else AlignedDataset
    return cls(root, phase=phase, load_size=load_size, crop_size=crop_size, train=train, seed=seed,
               direction=direction, max_size=max_size, crop_align=crop_align, flip=flip)


def test_phase(layout: Layout, root: str | Path) -> str:
    """Folder name of the evaluation split (``data.splits.find_test_split``'s rule).

    Unaligned data without a test split gives "test": the dataset then names the missing folder.
    """
    _check_layout(layout)
    if layout == "folder":
        return "test"  # FolderDataset picks test/ or the held-out share itself
    try:
        return find_test_split(root, layout=layout).phase
    except CrdError:
        if layout == "unaligned":
            return "test"
        raise


test_phase.__test__ = False  # not a pytest test, despite the name


def order_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for the epoch's shuffle, stable across processes and Python versions."""
    digest = hashlib.sha256(f"crdtool-order:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class EpochBatchSampler(Sampler[list]):
    """Batches of one epoch, ordered from (seed, epoch), starting after ``skip_batches`` batches.

    Keys are ``(epoch, i)`` for datasets that understand them (ours), so samples never depend on the
    dataset's mutable ``epoch`` attribute; plain ints otherwise.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, drop_last: bool = True,
                 skip_batches: int = 0, keyed: bool = True, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise CrdError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.epoch, self.drop_last = seed, epoch, drop_last
        self.skip_batches, self.keyed = max(0, int(skip_batches)), keyed
        self.rank, self.world_size = rank, world_size  # DDP: rank r takes every world_size-th sample

    def _n_local(self) -> int:
        # every rank gets the same count, or DDP ranks would disagree on the number of steps
        return self.n // self.world_size if self.world_size > 1 else self.n

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))[self.rank::self.world_size][:self._n_local()]
        g = torch.Generator().manual_seed(order_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g).tolist()[self.rank::self.world_size][:self._n_local()]

    def _total(self) -> int:
        n = self._n_local()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return max(0, self._total() - self.skip_batches)

    def __iter__(self) -> Iterator[list]:
        order = self.order()
        for b in range(self.skip_batches, self._total()):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.epoch, i) for i in idx] if self.keyed else idx


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, epoch: int, num_workers: int = 0,
                drop_last: bool = True, skip_batches: int = 0, pin_memory: bool = False, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    """A DataLoader whose batches are a pure function of (seed, epoch); ``skip_batches`` resumes mid-epoch
    without decoding the skipped samples. No worker_init_fn is needed: each sample seeds its own RNG.
    """
    keyed = hasattr(dataset, "set_epoch")
    if keyed:
        dataset.set_epoch(epoch)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, epoch, drop_last, skip_batches, keyed,
                                rank, world_size)
    # An explicit generator keeps DataLoader from drawing worker base seeds from torch's global RNG,
    # which would otherwise shift the training RNG stream depending on num_workers.
    gen = torch.Generator().manual_seed(order_seed(seed, epoch) ^ 0x5EED)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      generator=gen)
