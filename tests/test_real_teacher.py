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
    assert teacher.calls == 4 and teacher.images == 4  # one image per forward: batch-independent bits
    again = cache.outputs(paths[::-1], x.flip(0), "resize32")  # another order, as a new epoch would draw
    assert teacher.calls == 4, "a cached image must not reach the teacher again"
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


def test_cache_use_switches_teacher_and_drops_the_old_entries(tmp_path):
    """An online teacher's next round: other weights are translated afresh and the old outputs let go."""
    paths, x = _photos(tmp_path / "img"), _inputs()
    a, b = CountingTeacher(seed=0).eval(), CountingTeacher(seed=1).eval()
    cache = TeacherCache(a)
    first = cache.outputs(paths, x, "resize32")
    assert cache.use(a) is False and len(cache.memory) == 4  # the same weights: entries kept
    assert cache.use(b) is True and not cache.memory
    second = cache.outputs(paths, x, "resize32")
    assert b.images == 4 and a.images == 4 and not torch.equal(first, second)


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
    assert teacher.calls == 2 and not list(tmp_path.glob("**/*.npy"))
    xc, tc = crop_pair(x[0], t[0], 4, 8, 16, flip=True)
    assert xc.shape == tc.shape == (3, 16, 16)
    assert torch.equal(xc, x[0, :, 4:20, 8:24].flip(-1)) and torch.equal(tc, t[0, :, 4:20, 8:24].flip(-1))


class GridTeacher(torch.nn.Module):
    """Adds a ramp over columns: an output tied to the pixel grid, as a stride-2 upsampler's texture is."""

    def forward(self, x):
        return x + torch.arange(x.shape[-1], dtype=x.dtype) / 100.0


def test_a_mirrored_crop_is_the_teacher_on_the_mirrored_photo(tmp_path):
    from crdtool.data.images import load_image
    from crdtool.data.transforms import eval_transform

    paths = _photos(tmp_path / "img", n=2)
    cache = TeacherCache(GridTeacher().eval())
    crops = torch.tensor([[4, 8, 0], [4, 8, 1]])  # the same crop of image 0, plain and mirrored
    got = cache.batch_crops([paths[0], paths[0]], crops, 32, 16)
    x = eval_transform(load_image(paths[0]), 32)[:, 4:20, 8:24]
    ramp = torch.arange(32.0) / 100.0
    assert torch.allclose(got[0], x + ramp[8:24], atol=2e-3)  # stored as float16
    # the mirrored crop shows the teacher's grid the right way round: columns 32 - 8 - 16 = 8 .. 24 of
    # the mirrored photo, not the plain output's columns mirrored
    assert torch.allclose(got[1], x.flip(-1) + ramp[8:24], atol=2e-3)
    assert not torch.allclose(got[1], (x + ramp[8:24]).flip(-1), atol=2e-3)
    assert cache.summary()["misses"] == 2  # two views of one photo, each translated once
    cache.batch_crops([paths[0]], crops[1:], 32, 16)
    assert cache.summary()["misses"] == 2


# ----------------------------------------------------------------------------- folder layout + Distiller


def _folder_recipe(tmp_path, n=6, **sections):
    """A pretrained tiny teacher on a plain folder of n photos (no target domain)."""
    from crdtool.models.checkpoints import save_generator
    from tests.helpers import tiny_recipe

    _photos(tmp_path / "photos", n=n, size=36)
    torch.manual_seed(3)
    save_generator(build_generator("resnet", 4, n_blocks=1), tmp_path / "teacher.safetensors")
    data = {"layout": "folder", "synth": None, "load_size": 36, "crop_size": 32, "batch_size": 1, "eval_images": 1}
    data.update(sections.pop("data", {}))
    return tiny_recipe(tmp_path, data_root=tmp_path / "photos", data=data,
                       teacher={"arch": "resnet", "ngf": 4, "n_blocks": 1, "checkpoint": str(tmp_path / "teacher.safetensors")},
                       **{"train": {"student_epochs": 2, "eval_every": 1000}, **sections})


def test_folder_layout_splits_and_items(tmp_path):
    from crdtool.data import build_dataset, folder_split
    from crdtool.errors import CrdError

    files = _photos(tmp_path / "photos", n=10, size=36)
    train, how = folder_split(tmp_path / "photos", "train", 0.2)
    test, _ = folder_split(tmp_path / "photos", "test", 0.2)
    assert train == files[:8] and test == files[8:] and "first 8 of 10" in how
    ds = build_dataset("folder", tmp_path / "photos", "train", load_size=36, crop_size=32, test_fraction=0.2)
    item = ds[3]
    assert set(item) == {"A", "A_path", "A_crop"} and item["A"].shape == (3, 32, 32)
    top, left, flip = item["A_crop"].tolist()
    assert 0 <= top <= 4 and 0 <= left <= 4 and flip in (0, 1)
    # the crop is where the item says: the same cut of the whole resized image
    from crdtool.data.images import load_image
    from crdtool.data.transforms import eval_transform
    from crdtool.train.teacher_cache import crop

    whole = eval_transform(load_image(item["A_path"]), 36)
    assert torch.equal(crop(whole, top, left, 32, bool(flip)), item["A"])
    (tmp_path / "photos" / "test").mkdir()  # a test/ subfolder wins over the held-out share
    _photos(tmp_path / "photos" / "test", n=2, size=36)
    assert len(folder_split(tmp_path / "photos", "train", 0.2)[0]) == 10
    assert len(folder_split(tmp_path / "photos", "test", 0.2)[0]) == 2
    _photos(tmp_path / "one", n=1)
    with pytest.raises(CrdError, match="too few"):
        folder_split(tmp_path / "one", "train")


def test_pretrained_teacher_on_a_folder_picks_teacher_only_D_and_the_cache(tmp_path):
    from crdtool.train.loop import Distiller

    r = _folder_recipe(tmp_path, data={"flip": False})  # one view per photo: a mirrored one is another entry
    d = Distiller(r)
    assert d.d_real == "teacher" and d.teacher_cache is not None
    assert any("D learns the teacher's outputs as real" in n for n in d.notes)
    assert any("teacher cache" in n for n in d.notes)

    calls_per_step: list[int] = []
    seen = {"calls": 0}
    d.G_A.register_forward_hook(lambda *a: seen.__setitem__("calls", seen["calls"] + 1))
    d.on_progress = lambda info: calls_per_step.append(seen["calls"])
    before = {k: v.clone() for k, v in d.D_A.state_dict().items()}
    d.run()
    per_epoch = len(d.train_set)  # 5 photos (1 of 6 held out), batch 1
    assert len(calls_per_step) == 2 * per_epoch
    first, second = calls_per_step[:per_epoch], calls_per_step[per_epoch:]
    assert second[-1] == first[-1], "the second epoch must not run the teacher"
    assert d.teacher_cache.summary()["misses"] == per_epoch
    assert len(list((tmp_path / "run" / "teacher_cache").glob("*/*.npy"))) == per_epoch
    assert any(not torch.equal(before[k], v) for k, v in d.D_A.state_dict().items()), "D must learn"


def test_teacher_only_D_learns_teacher_real_student_fake(tmp_path):
    from crdtool.train.loop import Distiller

    d = Distiller(_folder_recipe(tmp_path, train={"student_epochs": 1, "teacher_cache": "off", "eval_every": 1000}))
    assert d.teacher_cache is None
    seen = []
    d.gan.discriminator = lambda real, fake: (seen.append((real, fake)), (real - fake).pow(2).mean())[1]
    batch = next(iter(d._batches("student", 0, 0)))
    d.student_step(batch)
    assert len(seen) == 1  # one real/fake pair: teacher output vs student output (no target images)


def test_a_detail_D_judges_only_the_fine_detail_at_its_own_rate(tmp_path):
    """discriminator.sees = "detail": D is shown each image minus its 1 px blur, in the student's GAN term
    and in its own update, and it learns at discriminator.lr_scale times train.lr."""
    from crdtool.losses import fine_detail
    from crdtool.train.loop import Distiller

    d = Distiller(_folder_recipe(tmp_path, discriminator={"ndf": 4, "sees": "detail", "lr_scale": 0.1},
                                 train={"student_epochs": 1, "teacher_cache": "off", "eval_every": 1000, "lr": 1e-3}))
    d.opts.set_lrs(*d.schedule.learning_rates(d.schedule.phases[0], d.progress))
    assert d.opts.opt_D.param_groups[0]["lr"] == pytest.approx(1e-4)  # a pretrained teacher's D: train.lr x 0.1
    shown = []
    d.D_A.register_forward_pre_hook(lambda m, args: shown.append(args[0].detach().clone()))
    batch = next(iter(d._batches("student", 0, 0)))
    with torch.no_grad():
        teacher_out = d.nets.teacher.eval()(batch["A"])
        student_out = d.nets.student(batch["A"])  # before the step updates it
    d.student_step(batch)
    assert len(shown) == 3  # the student's GAN term, then D's real and fake
    torch.testing.assert_close(shown[0], fine_detail(student_out), atol=1e-5, rtol=0)
    torch.testing.assert_close(shown[1], fine_detail(teacher_out), atol=1e-5, rtol=0)
    torch.testing.assert_close(shown[2], fine_detail(student_out), atol=1e-5, rtol=0)


def test_a_detail_D_needs_a_pretrained_teacher(tmp_path):
    from crdtool import distill
    from crdtool.errors import CrdError
    from crdtool.train.loop import Distiller
    from tests.helpers import tiny_recipe

    r = tiny_recipe(tmp_path, discriminator={"sees": "detail"})  # an online CycleGAN teacher
    distill.prepare_data(r)
    with pytest.raises(CrdError, match=r"tiny.toml: discriminator.sees = \"detail\" needs a pretrained teacher"):
        Distiller(r)


def test_folder_layout_D_modes_are_checked(tmp_path):
    from crdtool.errors import CrdError
    from crdtool.train.loop import Distiller

    with pytest.raises(CrdError, match="needs target-domain images"):
        Distiller(_folder_recipe(tmp_path, discriminator={"ndf": 4, "real": "data"}))
    d = Distiller(_folder_recipe(tmp_path / "b", discriminator={"ndf": 4, "student": "none"}))
    assert d.D_A is None and not any("D learns" in n for n in d.notes)


def test_export_reads_a_folder_layouts_own_splits(tmp_path):
    from crdtool.deploy.export import input_images

    r = _folder_recipe(tmp_path, n=10)
    test, _ = input_images(r, "test", None, 32)
    train, _ = input_images(r, "train", 4, 32)
    assert test.shape == (1, 3, 32, 32) and train.shape == (4, 3, 32, 32)  # 10 photos: 9 train, 1 held out


def test_real_vintagify_teacher_through_the_cache(tmp_path, shared_data):
    """The real 56.80G teacher on two real photos (64 px to stay fast): a subtle photo->photo
    translation, computed once; skipped when `crdtool weights get vintagify` has not been run."""
    from crdtool.data.images import list_images, load_image
    from crdtool.data.transforms import eval_transform
    from crdtool.metrics.fidelity import psnr
    from crdtool.models.checkpoints import load_generator
    from crdtool.weights import cached_path

    path = cached_path("vintagify")
    if path is None:
        pytest.skip("vintagify weights not fetched (crdtool weights get vintagify)")
    teacher = load_generator(path)
    assert teacher.spec.affine and teacher.spec.ngf == 64
    photos = list_images(shared_data / "photo2anime" / "testA")[:2]
    x = torch.stack([eval_transform(load_image(p), 64) for p in photos])
    cache = TeacherCache(teacher, tmp_path)
    out = cache.outputs(photos, x, "resize64")
    assert cache.outputs(photos, x, "resize64").equal(out) and cache.teacher_calls == 1
    assert 15.0 < psnr(out, x) < 40.0  # changed, but still the same photo


def test_bench_fid_of_a_folder_run_is_scored_against_its_teacher(tmp_path):
    """A folder-layout run inside a dataset with testA/testB must not be scored against testB."""
    from PIL import Image

    from crdtool.bench.quality import real_features, teacher_split
    from crdtool.models import build_generator
    from crdtool.models.checkpoints import save_generator
    from crdtool.recipe import dump_toml

    photos = tmp_path / "dataset" / "trainA"
    photos.mkdir(parents=True)
    (tmp_path / "dataset" / "testB").mkdir()  # another domain next to the photos
    for i in range(10):
        Image.new("RGB", (16, 16), (20 * i, 100, 200 - 10 * i)).save(photos / f"{i:02d}.png")
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text(dump_toml({"name": "t", "data": {"root": str(photos), "layout": "folder",
                                                                      "test_fraction": 0.2}}))
    torch.manual_seed(0)
    save_generator(build_generator("mobile_resnet", 4, n_blocks=1), run / "teacher.safetensors")
    split = teacher_split(run)
    assert [p.name for p in split.source] == ["08.png", "09.png"] and split.reference == run / "teacher.safetensors"
    assert "compared with the teacher's translations" in split.description

    seen = []

    class Probe(torch.nn.Module):  # stands in for Inception: records what it is shown
        def forward(self, x):
            seen.append(x)
            return x.mean((2, 3)).repeat(1, 4)

    feats = real_features(split, Probe(), size=16)
    assert feats.shape == (2, 12) and len(seen) == 1
    inputs_only = real_features(type(split)(split.source, split.source, False, "AtoB", "inputs"), Probe())
    assert not np.allclose(feats, inputs_only)  # the teacher's translations, not the photos themselves
    (run / "recipe.toml").write_text(dump_toml({"name": "t", "data": {"root": str(photos)}}))
    assert teacher_split(run) is None
