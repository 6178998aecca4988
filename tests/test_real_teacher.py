"""A pretrained teacher on a folder of photos: the teacher cache, the folder layout, the teacher-only D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crdtool.models import build_generator
from crdtool.train.teacher_cache import TeacherCache, crop_pair, weights_digest


class CountingTeacher(torch.nn.Module):
    """A tiny generator that counts its forward calls and images."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = build_generator("resnet", 2, n_blocks=1)
        self.calls = self.images = 0

    def forward(self, x):
        self.calls += 1
        self.images += len(x)
        return self.net(x)


def _photos(folder, n=4, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _inputs(n=4, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_cache_second_epoch_does_not_run_the_teacher(tmp_path):
    paths, x = _photos(tmp_path / "img"), _inputs()
    teacher = CountingTeacher().eval()
    cache = TeacherCache(teacher, tmp_path / "cache")
    first = cache.outputs(paths, x, "resize32")
    assert teacher.calls == 1 and teacher.images == 4
    again = cache.outputs(paths[::-1], x.flip(0), "resize32")  # another order, as a new epoch would draw
    assert teacher.calls == 1, "a cached image must not reach the teacher again"
    assert torch.allclose(again.flip(0), first)
    with torch.no_grad():
        direct = teacher.net(x)
    assert (first - direct).abs().max() < 2e-3  # float16 storage
    assert cache.summary() == {"hits": 4, "misses": 4, "teacher_calls": 1}

    # a new process (fresh cache object, nothing in memory) finds the entries on disk
    teacher2 = CountingTeacher().eval()
    cache2 = TeacherCache(teacher2, tmp_path / "cache")
    assert torch.equal(cache2.outputs(paths, x, "resize32"), first)
    assert teacher2.calls == 0


def test_cache_is_invalidated_by_other_weights_image_or_view(tmp_path):
    paths, x = _photos(tmp_path / "img"), _inputs()
    teacher = CountingTeacher(seed=0).eval()
    TeacherCache(teacher, tmp_path / "cache").outputs(paths, x, "resize32")

    other = CountingTeacher(seed=1).eval()  # other weights: other digest, nothing reused
    assert weights_digest(other) != weights_digest(teacher)
    cache = TeacherCache(other, tmp_path / "cache")
    cache.outputs(paths, x, "resize32")
    assert other.images == 4

    with torch.no_grad():  # the same module after a weight update is another teacher too
        teacher.net.model[1].weight.add_(0.1)
    updated = TeacherCache(teacher, tmp_path / "cache")
    teacher.images = 0
    updated.outputs(paths, x, "resize32")
    assert teacher.images == 4

    cache.outputs(paths, x, "resize64")  # another view of the same images
    assert other.images == 8
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(paths[0])  # an edited photo
    cache.outputs(paths, x, "resize32")
    assert other.images == 9


def test_memory_only_cache_and_crop_pair(tmp_path):
    paths, x = _photos(tmp_path / "img", n=2), _inputs(2)
    teacher = CountingTeacher().eval()
    cache = TeacherCache(teacher)  # no folder: memory only
    t = cache.outputs(paths, x, "v")
    cache.outputs(paths, x, "v")
    assert teacher.calls == 1 and not list(tmp_path.glob("**/*.npy"))
    xc, tc = crop_pair(x[0], t[0], 4, 8, 16, flip=True)
    assert xc.shape == tc.shape == (3, 16, 16)
    assert torch.equal(xc, x[0, :, 4:20, 8:24].flip(-1)) and torch.equal(tc, t[0, :, 4:20, 8:24].flip(-1))
