"""The paper's schedules: learning-rate decay as the reference computes it, progress totals, the
shipped recipes' choices, and the pretrained BatchNorm teacher's statistics."""

import copy
from pathlib import Path

import pytest
import torch

from crdtool import distill
from crdtool.models import build_generator
from crdtool.recipe import load_recipe
from crdtool.runtime import Runtime
from crdtool.train.loop import Distiller
from crdtool.train.schedule import Phase, Progress, Schedule, linear_decay
from tests.helpers import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_linear_decay_matches_the_reference_lambda_rule():
    # reference: 1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1), LambdaLR's epoch counted from 0
    assert linear_decay(0, 100, 100) == 1.0
    assert linear_decay(99, 100, 100) == 1.0  # the 100th epoch
    assert linear_decay(100, 100, 100) == pytest.approx(0.990099, abs=1e-6)  # the 101st
    assert linear_decay(199, 100, 100) == pytest.approx(0.009901, abs=1e-6)  # the 200th, last
    assert linear_decay(4, 5, 15) == 1.0 and linear_decay(5, 5, 15) == pytest.approx(15 / 16)


def _distiller(tmp_path, **sections) -> Distiller:
    r = tiny_recipe(tmp_path, **sections)
    distill.prepare_data(r)
    return Distiller(r, runtime=Runtime.create("cpu", "fp32", env={}))


def _train(**train):
    return tiny_recipe(Path("unused"), train=train).train


def test_online_student_decays_with_the_teacher_epochs_not_its_own():
    s = Schedule.plan("cyclegan", _train(teacher_epochs=4, teacher_epochs_decay=4, round_epochs=2,
                                         student_epochs_per_round=3, lr=1.0), epoch_len=8)
    p = Progress(teacher_epoch=6, student_epoch=0)  # a student round after teacher epochs 0..5
    assert s.learning_rates(Phase("student", 3), p)[1] == pytest.approx(linear_decay(5, 4, 4)) == pytest.approx(0.6)
    p.student_epoch = 20  # the student's own epoch count must not matter
    assert s.learning_rates(Phase("student", 3), p)[1] == pytest.approx(0.6)
    assert s.learning_rates(Phase("teacher", 2), p)[0] == pytest.approx(0.4)  # teacher epoch index 6: 1 - 3/5


def test_pretrained_student_decays_over_its_own_epochs_half_constant_half_decay():
    s = Schedule.plan("pretrained", _train(student_epochs=5, teacher_epochs=100, lr=1.0), epoch_len=8)
    assert s.phases == (Phase("student", 5),) and s.student_epochs == 5
    rates = [s.learning_rates(s.phases[0], Progress(student_epoch=e))[1] for e in range(5)]
    # n = 5: 5 // 2 = 2 constant epochs, then 3 of decay with the reference's epoch + 1 rule: 1 - k / 4
    assert rates == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])


def test_pix2pix_student_takes_the_teachers_rate():
    s = Schedule.plan("pix2pix", _train(teacher_epochs=1, teacher_epochs_decay=3, lr=2.0), epoch_len=4)
    assert s.phases == (Phase("joint", 4),)
    assert s.learning_rates(s.phases[0], Progress(teacher_epoch=2)) == pytest.approx((1.0, 1.0))  # 2 * (1 - 2/4)


def test_planned_steps_stop_at_the_student_cap():
    # rounds: teacher 1 epoch (8 steps), student 1 epoch (8), teacher 1 epoch, student 1 epoch
    s = Schedule.plan("cyclegan", _train(max_steps=12), epoch_len=8)
    assert [ph.kind for ph in s.phases] == ["teacher", "student", "teacher", "student"]
    assert s.total_steps == 32 and s.planned_steps() == 8 + 8 + 8 + 4
    assert Schedule.plan("cyclegan", _train(max_steps=100), epoch_len=8).planned_steps() == 32
    assert Schedule.plan("cyclegan", _train(max_steps=8), epoch_len=8).planned_steps() == 16
    assert s.finished(Progress(student_steps=12)) and not s.finished(Progress(student_steps=11, phase=3))


def _pix2pix(tmp_path, **train):
    return dict(task="pix2pix",
                data={"layout": "aligned", "synth": {"kind": "paired", "size": 32, "count": 8, "seed": 0}},
                teacher={"arch": "unet", "ngf": 4, "num_downs": 5},
                student={"arch": "unet", "ngf": 2, "num_downs": 5},
                discriminator={"ndf": 4, "norm": "batch", "gan_mode": "hinge", "student": "none"},
                loss={"lambda_crd": 2.5, "patch_size": 8}, train=train)


def test_pix2pix_progress_total_counts_each_joint_step_once(tmp_path):
    d = _distiller(tmp_path, **_pix2pix(tmp_path, teacher_epochs=1, teacher_epochs_decay=0))
    total = d.total_steps()
    res = d.run()
    assert total == res.steps == res.student_steps == 8


def _bn_teacher(tmp_path, **teacher) -> Distiller:
    torch.manual_seed(3)
    t = build_generator("unet", 4, num_downs=5, norm="batch")
    for m in t.modules():  # running statistics far from any batch's, so the two modes differ clearly
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(0.5)
            m.running_var.fill_(4.0)
    torch.save(t.state_dict(), tmp_path / "t.pth")
    spec = {"arch": "unet", "ngf": 4, "num_downs": 5, "norm": "batch", "checkpoint": str(tmp_path / "t.pth")}
    d = _distiller(tmp_path, **{**_pix2pix(tmp_path, student_epochs=1),
                                "teacher": {**spec, **teacher}, "discriminator": {"ndf": 4, "student": "none"}})
    return d, t


def test_pretrained_batchnorm_teacher_uses_batch_statistics_by_default(tmp_path):
    """As the official pix2pix test.py without --eval: the model in train mode, so BatchNorm uses the batch."""
    d, official = _bn_teacher(tmp_path)
    x = torch.stack([d.train_set[(0, i)]["A"] for i in range(2)])
    saved = copy.deepcopy(official.state_dict())
    with torch.no_grad():
        want = official.train()(x)
        got = d.G_A.eval()(x)  # every caller puts the teacher in eval(); batch statistics all the same
    torch.testing.assert_close(got, want)
    d.student_step({"A": x, "B": x})
    for k, v in d.G_A.state_dict().items():  # running statistics neither used nor changed
        assert torch.equal(v, saved[k]), k


def test_pretrained_batchnorm_teacher_running_statistics_on_request(tmp_path):
    d, official = _bn_teacher(tmp_path, batchnorm_stats="running")
    x = torch.stack([d.train_set[(0, i)]["A"] for i in range(2)])
    with torch.no_grad():
        torch.testing.assert_close(d.G_A.eval()(x), official.eval()(x))  # official test.py --eval
        assert not torch.allclose(official.eval()(x), official.train()(x), atol=1e-3)


def test_shipped_recipes_follow_the_paper():
    for name in ("h2z", "s2w"):
        assert load_recipe(ROOT / "recipes" / f"{name}.toml").train.teacher_select == "fid", name
    assert load_recipe(ROOT / "recipes" / "s2w.toml").train.round_epochs == 6
    e2s = load_recipe(ROOT / "recipes" / "e2s.toml")
    assert (e2s.train.teacher_epochs, e2s.train.teacher_epochs_decay) == (100, 100)
    assert (e2s.loss.lambda_style, e2s.loss.lambda_feature) == (2.0, 2.0) and e2s.loss.vgg_weights is not None
    assert e2s.teacher.batchnorm_stats == "batch"
