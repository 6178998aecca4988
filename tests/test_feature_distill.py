"""Feature distillation (loss.lambda_distill): the taps, the loss, the teacher cache's features, a run."""

from __future__ import annotations

import pytest
import torch

from crdtool.losses import FeatureCapture, FeatureDistillLoss
from crdtool.models import build_generator
from crdtool.models.resnet import residual_taps
from crdtool.train.teacher_cache import TeacherCache
from tests.test_real_teacher import _folder_recipe, _photos


@pytest.mark.parametrize("arch, width", [("resnet", 16), ("mobile_resnet", 16)])
def test_taps_are_the_encoder_end_and_the_block_outputs(arch, width):
    gen = build_generator(arch, 4, n_blocks=3)
    taps, w = residual_taps(gen, [0, 1, 3])
    assert w == width  # ngf 4 x 4 after two downsamplings
    assert taps == [gen.model[9], gen.model[10], gen.model[12]]  # encoder: 10 modules, then the blocks
    x = torch.rand(1, 3, 32, 32)
    with FeatureCapture(taps) as got:
        gen(x)
    assert [tuple(f.shape) for f in got] == [(1, width, 8, 8)] * 3
    assert gen.model[9] is taps[0] and not taps[0]._forward_hooks  # no hook outlives the capture
    with pytest.raises(ValueError, match=r"block 4 is not in 0\.\.3"):
        residual_taps(gen, [4])
    with pytest.raises(ValueError, match="no residual blocks"):
        residual_taps(build_generator("unet", 4, num_downs=5), [0])


def test_feature_loss_is_the_mse_of_the_mapped_student_features():
    loss = FeatureDistillLoss(2, 3, taps=1)
    with torch.no_grad():  # map: channel 0 of the student to every teacher channel, plus 0.5
        loss.maps[0].weight.zero_()
        loss.maps[0].weight[:, 0] = 1.0
        loss.maps[0].bias.fill_(0.5)
    s = torch.zeros(1, 2, 2, 2)
    s[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    t = torch.ones(1, 3, 2, 2)
    # mapped = s0 + 0.5 = [[0.5, 1.5], [2.5, 3.5]]; minus 1: [-0.5, 0.5, 1.5, 2.5]; squares 0.25 0.25 2.25 6.25
    got = loss([s], [t])
    assert got.item() == pytest.approx(9.0 / 4)
    got.backward()
    assert loss.maps[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="1 taps, got 2"):
        loss([s, s], [t])
    with pytest.raises(ValueError, match="the teacher's are"):
        loss([s], [torch.ones(1, 3, 4, 4)])


def _teacher():
    torch.manual_seed(5)
    return build_generator("resnet", 4, n_blocks=2).eval()


def test_the_cache_keeps_the_teachers_features_and_cuts_crops_on_their_grid(tmp_path):
    from crdtool.data.images import load_image
    from crdtool.data.transforms import eval_transform

    paths = _photos(tmp_path / "img", n=2)
    teacher = _teacher()
    taps = residual_taps(teacher, [0, 2])[0]
    cache = TeacherCache(teacher, tmp_path / "cache", taps=taps, taps_id="blocks0,2")
    crops = torch.tensor([[4, 8, 0], [4, 8, 1]])  # the same crop of photo 0, plain and mirrored
    got = cache.batch_crops([paths[0], paths[0]], crops, 32, 16, features=True)
    assert got.shape == (2, 32, 4, 4) and cache.summary()["misses"] == 2
    x = eval_transform(load_image(paths[0]), 32)[None]
    with torch.no_grad(), FeatureCapture(taps) as live:
        teacher(x)
    whole = torch.cat(live, 1)[0]
    torch.testing.assert_close(got[0], whole[:, 1:5, 2:6], atol=2e-2, rtol=1e-2)  # float16 storage
    with torch.no_grad(), FeatureCapture(taps) as live:
        teacher(x.flip(-1))
    mirrored = torch.cat(live, 1)[0]  # the mirror's crop from the right edge: columns (32 - 8 - 16) / 4 = 2
    torch.testing.assert_close(got[1], mirrored[:, 1:5, 2:6], atol=2e-2, rtol=1e-2)
    # the outputs came with the same forwards, and the features are on disk only
    cache.batch_crops([paths[0]], crops[:1], 32, 16)
    assert cache.summary()["misses"] == 2
    assert len(cache.memory) == 2 and len(list(cache.folder.glob("*.npy"))) == 4
    with pytest.raises(ValueError, match="off the features' 4-pixel grid"):
        cache.batch_crops([paths[0]], torch.tensor([[2, 8, 0]]), 32, 16, features=True)
    # another process finds them on disk without the teacher
    again = TeacherCache(teacher, tmp_path / "cache", taps=taps, taps_id="blocks0,2")
    again.batch_crops([paths[0], paths[0]], crops, 32, 16, features=True)
    assert again.summary()["misses"] == 0
    with pytest.raises(ValueError, match="without taps"):
        TeacherCache(teacher).outputs_for(paths, "resize32", lambda i: x[0], features=True)


def _distill_recipe(tmp_path, cache="auto", **loss):
    return _folder_recipe(tmp_path, data={"flip": False, "load_size": 32, "crop_size": 32, "batch_size": 2},
                          student={"arch": "mobile_resnet", "ngf": 2, "n_blocks": 2},
                          discriminator={"ndf": 4, "student": "none"},
                          loss={"kd": "none", "lambda_pixel": 10.0, "lambda_distill": 1.0,
                                "distill_blocks": [0, 1], **loss},
                          train={"student_epochs": 2, "eval_every": 1000, "teacher_cache": cache})


def test_a_run_distils_the_teachers_features_from_the_cache(tmp_path):
    from crdtool.train.loop import Distiller
    from crdtool.train.state import load_checkpoint, latest_checkpoint

    d = Distiller(_distill_recipe(tmp_path / "a"))
    assert d.teacher_cache is not None and any("features after blocks [0, 1]" in n for n in d.notes)
    live = Distiller(_distill_recipe(tmp_path / "b", cache="off"))
    batch = next(iter(d._batches("student", 0, 0)))
    cached_terms, live_terms = d.student_step(batch), live.student_step(batch)
    assert cached_terms["distill"] > 0
    assert cached_terms["distill"] == pytest.approx(live_terms["distill"], rel=1e-2)  # float16 cache

    before = [p.detach().clone() for p in d.nets.distill.parameters()]
    d.run()
    assert any(not torch.equal(a, b) for a, b in zip(before, d.nets.distill.parameters())), "the maps must learn"
    snap = load_checkpoint(latest_checkpoint(tmp_path / "a" / "run"))
    assert any(k.startswith("distill.maps.") for k in snap.weights)
    from crdtool.models.checkpoints import load_generator

    exported = load_generator(tmp_path / "a" / "run" / "student.safetensors")
    assert set(exported.state_dict()) == set(d.nets.student.state_dict())  # the maps are not the student's


def test_feature_distillation_is_checked_against_the_recipe(tmp_path):
    from crdtool import distill
    from crdtool.errors import CrdError
    from crdtool.train.loop import Distiller
    from tests.helpers import tiny_recipe

    with pytest.raises(CrdError, match=r"tiny.toml: loss.distill_blocks: the teacher: block 9 is not in 0\.\.1"):
        Distiller(_distill_recipe(tmp_path / "a", distill_blocks=[0, 9]))
    with pytest.raises(CrdError, match=r"lambda_distill with train.teacher_cache needs data.crop_align a multiple of 4"):
        Distiller(_folder_recipe(tmp_path / "b", data={"crop_align": 2},
                                 loss={"kd": "none", "lambda_distill": 1.0, "distill_blocks": [0]}))
    r = tiny_recipe(tmp_path / "c", loss={"lambda_distill": 1.0})  # an online CycleGAN teacher
    distill.prepare_data(r)
    with pytest.raises(CrdError, match="loss.lambda_distill needs a pretrained teacher"):
        Distiller(r)
