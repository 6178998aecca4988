import pytest
import torch
from torch import nn

from crdtool import distill
from crdtool.models.checkpoints import load_generator
from crdtool.train.state import latest_checkpoint, load_checkpoint
from crdtool.train.weight_average import WeightAverage
from tests.helpers import tiny_recipe


def scalar_model(value: float) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_the_average_starts_with_a_copy_then_follows_the_ema_rule():
    model, average = scalar_model(0.0), WeightAverage(0.5, start_step=2)
    seen = []
    for step, w in enumerate([8.0, 4.0, 2.0, 6.0, 10.0]):  # the weights after each optimiser step
        with torch.no_grad():
            model.weight.fill_(w)
        average.update(model, step)
        seen.append(None if average.model is None else float(average.model.weight.detach()))
    # steps 0, 1: not yet; step 2 copies 2.0; then 0.5 * 2 + 0.5 * 6 = 4; 0.5 * 4 + 0.5 * 10 = 7
    assert seen == [None, None, 2.0, 4.0, 7.0]
    assert average.updates == 3
    assert float(model.weight.detach()) == 10.0, "averaging never touches the model itself"


def test_a_decay_outside_the_open_unit_interval_is_refused():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="EMA decay"):
            WeightAverage(bad)


def pretrained_recipe(tmp_path, data_root=None, **train):
    torch.manual_seed(1)
    from crdtool.models import build_generator

    teacher = build_generator("resnet", 4, n_blocks=2)
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    small = {"kind": "unpaired", "size": 32, "count": 8, "seed": 0}
    return tiny_recipe(tmp_path, data_root=data_root, data={"synth": small},
                       teacher={"arch": "resnet", "ngf": 4, "n_blocks": 2, "checkpoint": str(tmp_path / "teacher.pth")},
                       student={"arch": "mobile_resnet", "ngf": 4, "n_blocks": 2},
                       discriminator={"ndf": 4, "student": "none"},
                       train={"student_epochs": 2, "eval_every": 1000, "lr": 1e-3, **train})


def test_a_run_with_an_ema_writes_the_average_as_its_student(tmp_path):
    res = distill.run(pretrained_recipe(tmp_path, ema_decay=0.9, ema_start=0.5))
    assert res.student_steps == 16
    run = tmp_path / "run"
    ema, raw = load_generator(run / "student.safetensors"), load_generator(run / "student-raw.safetensors")
    snap = load_checkpoint(latest_checkpoint(run))
    assert snap.state["student_average_updates"] == 8  # student steps 8..15 of 16
    for k, v in raw.state_dict().items():
        assert torch.equal(v, snap.weights[f"student.{k}"])
        assert torch.equal(ema.state_dict()[k], snap.weights[f"student_average.{k}"])
    differs = [k for k, v in raw.state_dict().items() if v.is_floating_point() and not torch.equal(v, ema.state_dict()[k])]
    assert differs, "the average of 8 moving steps equals the last weights"


def test_a_resumed_run_ends_with_the_same_average(tmp_path):
    full = pretrained_recipe(tmp_path / "a", ema_decay=0.9, checkpoint_every=5)
    distill.run(full)
    data = tmp_path / "a" / "data"
    part = pretrained_recipe(tmp_path / "b", data, ema_decay=0.9, checkpoint_every=5, max_steps=11)
    distill.run(part)  # stops after step 11: the average has started (step 8) and is in the checkpoint
    assert load_checkpoint(latest_checkpoint(tmp_path / "b" / "run")).state["student_average_updates"] == 3
    rest = pretrained_recipe(tmp_path / "b", data, ema_decay=0.9, checkpoint_every=5)
    distill.run(rest, resume=True)
    a = load_generator(tmp_path / "a" / "run" / "student.safetensors").state_dict()
    b = load_generator(tmp_path / "b" / "run" / "student.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
