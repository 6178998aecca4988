"""FID-based choice of the online CycleGAN teacher, tracked per direction.

After each teacher round, G_A (A->B) is scored on the test split's A images against statistics of
the real B test images, and G_B (B->A) on B against A. The best A->B generator so far is the one the
student distils from. (The public code let a B->A improvement overwrite the best A->B teacher.)
Real statistics are computed once per run and cached in the run folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from crdtool.data import test_phase
from crdtool.data.images import list_images, load_folder_tensor
from crdtool.metrics import fid as fidlib
from crdtool.train.evaluate import translate
from crdtool.train.networks import Networks


class Scorer(Protocol):
    def score(self, generator: nn.Module, direction: str) -> float: ...


class TeacherScorer:
    """FID of a generator in a direction ("AtoB" or "BtoA") on the test split; Inception loads on first use."""

    def __init__(self, data_root: Path, size: int, run_dir: Path, n_images: int, weights: Path | None = None):
        self.root, self.size, self.run_dir, self.n = Path(data_root), size, Path(run_dir), n_images
        self.weights = weights
        self.phase = test_phase("unaligned", self.root)
        self._model: nn.Module | None = None
        self._real: dict[str, fidlib.FIDStats] = {}

    @classmethod
    def for_recipe(cls, recipe: Any, run_dir: Path) -> "TeacherScorer":
        d, t = recipe.data, recipe.train
        return cls(d.root, d.crop_size, run_dir, t.fid_images, t.inception_weights)

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            self._model = fidlib.load_inception(self.weights)
        return self._model

    def _folder(self, domain: str) -> Path:
        return self.root / f"{self.phase}{domain}"

    def real_stats(self, domain: str) -> fidlib.FIDStats:
        """Statistics of real test images of ``domain``, at the training size (cached in the run folder)."""
        if domain not in self._real:
            cache = self.run_dir / f"fid_real_{domain}_{self.size}px.npz"
            if cache.is_file():
                self._real[domain] = fidlib.load_stats(cache)
            else:
                imgs = load_folder_tensor(self._folder(domain), self.size, self.n)
                stats = fidlib.compute_stats(iter(fidlib.to_uint8_images(imgs).split(16)), self.model)
                fidlib.save_stats(cache, stats)
                self._real[domain] = stats
        return self._real[domain]

    @torch.no_grad()
    def score(self, generator: nn.Module, direction: str) -> float:
        src, dst = ("A", "B") if direction == "AtoB" else ("B", "A")
        inputs = load_folder_tensor(self._folder(src), self.size, self.n, files=list_images(self._folder(src)))
        fake = fidlib.to_uint8_images(translate(generator, inputs))
        stats = fidlib.compute_stats(iter(fake.split(16)), self.model)
        return fidlib.fid_from_stats(stats, self.real_stats(dst))


def keep_best_teacher(nets: Networks, scorer: Scorer, best_fid: dict[str, float],
                      log: Callable[[dict[str, Any]], Any]) -> None:
    """End of a teacher round: score each direction, and keep a frozen copy of G_A when A->B improved."""
    for direction, G in (("AtoB", nets.G_A), ("BtoA", nets.G_B)):
        if G is None:
            continue
        score = scorer.score(G, direction)
        if score < best_fid.get(direction, math.inf):
            best_fid[direction] = score
            if direction == "AtoB":
                nets.keep_best_teacher()
        log({"kind": "teacher_eval", "direction": direction, "fid": score, "best": best_fid[direction]})
