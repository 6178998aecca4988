"""FID-based choice of the online CycleGAN teacher, tracked per direction.

After each teacher round, G_A (A->B) is scored on the test split's A images against statistics of
the real B test images, and G_B (B->A) on B against A. The best A->B generator so far is the one the
student distils from. (The public code let a B->A improvement overwrite the best A->B teacher.)
Real statistics are computed once per run and cached in the run folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from crdtool.data import test_phase
from crdtool.data.images import list_images, load_folder_tensor
from crdtool.metrics import fid as fidlib
from crdtool.train.evaluate import translate


class TeacherScorer:
    def __init__(self, data_root: Path, size: int, run_dir: Path, n_images: int, weights: Path | None = None):
        self.model = fidlib.load_inception(weights)
        self.root, self.size, self.run_dir, self.n = Path(data_root), size, Path(run_dir), n_images
        self.phase = test_phase("unaligned", self.root)
        self._real: dict[str, fidlib.FIDStats] = {}

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

    def score(self, generator: nn.Module, direction: str) -> float:
        src, dst = ("A", "B") if direction == "AtoB" else ("B", "A")
        inputs = load_folder_tensor(self._folder(src), self.size, self.n, files=list_images(self._folder(src)))
        fake = fidlib.to_uint8_images(translate(generator, inputs))
        stats = fidlib.compute_stats(iter(fake.split(16)), self.model)
        return fidlib.fid_from_stats(stats, self.real_stats(dst))


def teacher_fid(distiller, direction: str, generator: nn.Module) -> float:
    """FID of ``generator`` in ``direction`` on the run's test split (scorer built on first use)."""
    scorer = getattr(distiller, "_teacher_scorer", None)
    if scorer is None:
        r = distiller.r
        scorer = TeacherScorer(r.data.root, r.data.crop_size, distiller.run_dir, r.train.fid_images,
                               r.train.inception_weights)
        distiller._teacher_scorer = scorer
    with torch.no_grad():
        return scorer.score(generator, direction)
