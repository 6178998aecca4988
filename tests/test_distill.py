import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from crdtool import distill
from crdtool.errors import CrdError
from crdtool.models import build_generator
from crdtool.models.checkpoints import load_generator
from crdtool.train.loop import Distiller
from tests.helpers import tiny_recipe


def weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def first_batch(d):
    return next(iter(d._batches("student", 0, 0)))


def test_discriminator_frozen_in_student_steps_and_updated_in_teacher_steps(tmp_path):
    r = tiny_recipe(tmp_path)
    distill.prepare_data(r)
    d = Distiller(r)
    batch = first_batch(d)
    before = weights(d.D_A)
    d.steps["teacher"](batch)
    after_teacher = weights(d.D_A)
    assert not same(before, after_teacher), "teacher step must update the online discriminator"
    grads = {n: p.grad.clone() for n, p in d.D_A.named_parameters()}
    student_before = weights(d.student)
    seen_requires_grad = []
    hook = d.D_A.register_forward_pre_hook(
        lambda m, a: seen_requires_grad.append(any(p.requires_grad for p in m.parameters())))
    losses = d.student_step(batch)
    hook.remove()
    assert "gan" in losses and "crd" in losses
    assert seen_requires_grad == [False], "D must have requires_grad=False during the student's forward"
    assert same(after_teacher, weights(d.D_A)), "student step must not change D"
    assert all(torch.equal(grads[n], p.grad) for n, p in d.D_A.named_parameters()), "student step must not touch D grads"
    assert not same(student_before, weights(d.student))
    assert all(p.requires_grad for p in d.D_A.parameters()), "D is trainable again for the next teacher step"


def test_updated_mode_steps_discriminator_in_student_steps(tmp_path):
    r = tiny_recipe(tmp_path, discriminator={"ndf": 4, "student": "updated"})
    distill.prepare_data(r)
    d = Distiller(r)
    before = weights(d.D_A)
    d.student_step(first_batch(d))
    assert not same(before, weights(d.D_A))


def test_short_distill_brings_student_closer_to_teacher(tmp_path):
    # A fixed, pretrained teacher; the student learns from CRD alone. CRD is a relational distance
    # (invariant to output scale/offset), so that is the distance that must shrink.
    torch.manual_seed(1)
    teacher = build_generator("resnet", 4, n_blocks=2)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    r = tiny_recipe(tmp_path, teacher={"arch": "resnet", "ngf": 4, "n_blocks": 2,
                                       "checkpoint": str(tmp_path / "teacher.pth")},
                    student={"arch": "mobile_resnet", "ngf": 4, "n_blocks": 2},
                    discriminator={"ndf": 4, "student": "none"},
                    train={"student_epochs": 3, "eval_every": 1000, "lr": 1e-3})
    res = distill.run(r)
    assert res.student_steps == 48
    assert res.last_eval["crd"] < 0.8 * res.first_eval["crd"], (res.first_eval, res.last_eval)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(row["kind"] == "eval" for row in rows) and any(row["kind"] == "train" for row in rows)
    assert len(list((tmp_path / "run" / "samples").glob("*.png"))) == 2
    student = load_generator(tmp_path / "run")
    assert student.spec.name == "mobile_resnet"


def test_resume_reproduces_uninterrupted_run(tmp_path):
    # 8 images per domain: teacher epoch (8 steps), student epoch (8), teacher epoch, then 4 student steps.
    small = {"kind": "unpaired", "size": 32, "count": 8, "seed": 0}
    full = tiny_recipe(tmp_path / "a", data={"synth": small}, train={"max_steps": 12, "checkpoint_every": 5})
    res = distill.run(full)
    assert res.student_steps == 12 and res.steps == 28
    part = tiny_recipe(tmp_path / "b", data_root=tmp_path / "a" / "data", data={"synth": small},
                       train={"max_steps": 5, "checkpoint_every": 5})
    distill.run(part)
    rest = tiny_recipe(tmp_path / "b", data_root=tmp_path / "a" / "data", data={"synth": small},
                       train={"max_steps": 12, "checkpoint_every": 5})
    res2 = distill.run(rest, resume=True)
    assert res2.steps == res.steps
    from crdtool.train.state import latest_checkpoint, load_checkpoint

    wa = load_checkpoint(latest_checkpoint(tmp_path / "a" / "run")).weights
    wb = load_checkpoint(latest_checkpoint(tmp_path / "b" / "run")).weights
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"


def test_existing_run_requires_resume_and_mismatch_is_reported(tmp_path):
    r = tiny_recipe(tmp_path, train={"max_steps": 2})
    distill.run(r)
    with pytest.raises(CrdError, match="already holds a run"):
        distill.run(r)
    changed = tiny_recipe(tmp_path, student={"arch": "mobile_resnet", "ngf": 3, "n_blocks": 2}, train={"max_steps": 4})
    with pytest.raises(CrdError, match="does not match this recipe: 'student'"):
        distill.run(changed, resume=True)


def test_discriminator_starts_from_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from crdtool.train.state import latest_checkpoint, load_checkpoint

    src = tiny_recipe(tmp_path / "src", train={"max_steps": 2})
    distill.run(src)  # an online teacher run: its D_A is trained
    trained = {k[len("D_A."):]: v for k, v in load_checkpoint(latest_checkpoint(src.run_dir)).weights.items()
               if k.startswith("D_A.")}
    data = tmp_path / "src" / "data"
    plain, official = tmp_path / "d.safetensors", tmp_path / "latest_net_D_A.pth"
    save_file(trained, str(plain))
    torch.save({f"module.{k}": v for k, v in trained.items()}, official)  # DataParallel-style names
    for source in (src.run_dir, latest_checkpoint(src.run_dir), plain, official):
        r = tiny_recipe(tmp_path / "dst", data_root=data, discriminator={"ndf": 4, "checkpoint": str(source)})
        assert same(trained, weights(Distiller(r).D_A)), source
    r = tiny_recipe(tmp_path / "dst", data_root=data)
    assert not same(trained, weights(Distiller(r).D_A))
    # a D of another width: one line naming the first key that does not fit
    wide = tiny_recipe(tmp_path / "dst", data_root=data, discriminator={"ndf": 8, "checkpoint": str(plain)})
    with pytest.raises(CrdError, match=r"key 'model.0.weight' has shape \(4, 3, 4, 4\), expected \(8, 3, 4, 4\)") as e:
        Distiller(wide)
    assert "\n" not in str(e.value)
    missing = tiny_recipe(tmp_path / "dst", data_root=data, discriminator={"ndf": 4, "checkpoint": "nope"})
    with pytest.raises(CrdError, match="discriminator checkpoint not found"):
        Distiller(missing)


def test_train_threads_sets_the_intra_op_pool(tmp_path):
    before = torch.get_num_threads()
    r = tiny_recipe(tmp_path, train={"threads": 2})  # conftest pins 1 thread: 2 shows the recipe took effect
    distill.prepare_data(r)
    try:
        Distiller(r)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_compiled_student_matches_eager(tmp_path):
    # train.compile: the student's forward runs through torch.compile (inductor; ~1 min cold on 2 cores)
    r = tiny_recipe(tmp_path, train={"compile": True})
    distill.prepare_data(r)
    compiled, eager = Distiller(r), Distiller(tiny_recipe(tmp_path / "e", data_root=tmp_path / "data"))
    assert compiled.fwd["student"] is not compiled.student and eager.fwd["student"] is eager.student
    batch = first_batch(compiled)
    x = batch["A"]
    with torch.no_grad():
        t = eager.G_A(x)
    for d in (compiled, eager):  # the same loss and gradients (Adam's first steps would amplify tiny differences)
        d.student.zero_grad()
        sum(d.steps["student"].terms(x, t)[1].values()).backward()
    ga, gb = ({n: p.grad for n, p in d.student.named_parameters()} for d in (compiled, eager))
    scale = max(float(g.abs().max()) for g in gb.values())  # biases before a norm have ~0 gradient: use one scale
    assert max(float((ga[n] - gb[n]).abs().max()) for n in gb) < 1e-5 * scale
    for _ in range(2):
        a, b = compiled.student_step(batch), eager.student_step(batch)
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-3) for k in a)
    assert not any("_orig_mod" in k for k in compiled.checkpoints.snapshot().weights), "plain module keys"


def test_missing_data_folder_is_one_line(tmp_path):
    r = tiny_recipe(tmp_path, data_root=tmp_path / "nowhere")
    r.data.synth = None
    with pytest.raises(CrdError) as e:
        distill.run(r)
    assert "nowhere" in str(e.value) and "\n" not in str(e.value)


def test_bad_image_does_not_kill_the_run(tmp_path):
    r = tiny_recipe(tmp_path, train={"max_steps": 20})
    distill.prepare_data(r)
    bad = r.data.root / "trainA" / "zz_truncated.png"
    good = sorted((r.data.root / "trainA").glob("*.png"))[0].read_bytes()
    bad.write_bytes(good[: len(good) // 3])
    distiller = Distiller(r)
    res = distiller.run()
    assert res.student_steps == 20
    assert [Path(p).name for p in distiller.train_set.bad_files] == ["zz_truncated.png"]  # recorded, then skipped


def test_mismatched_teacher_checkpoint_is_one_line(tmp_path):
    torch.save(build_generator("resnet", 8, n_blocks=2).state_dict(), tmp_path / "t.pth")
    r = tiny_recipe(tmp_path, teacher={"arch": "resnet", "ngf": 4, "n_blocks": 2, "checkpoint": str(tmp_path / "t.pth")})
    with pytest.raises(CrdError) as e:
        distill.run(r)
    assert "model.1.weight" in str(e.value) and "\n" not in str(e.value)


def test_pix2pix_joint_steps(tmp_path):
    r = tiny_recipe(tmp_path, task="pix2pix",
                    data={"layout": "aligned", "synth": {"kind": "paired", "size": 32, "count": 8, "seed": 0}},
                    teacher={"arch": "unet", "ngf": 4, "num_downs": 5},
                    student={"arch": "unet", "ngf": 2, "num_downs": 5},
                    discriminator={"ndf": 4, "norm": "batch", "gan_mode": "hinge", "student": "none"},
                    loss={"lambda_crd": 2.5, "patch_size": 8},
                    train={"max_steps": 4})
    res = distill.run(r)
    assert res.student_steps == 4 and res.steps == 4


def test_best_teacher_is_tracked_per_direction(tmp_path):
    """A B->A improvement must not replace the best A->B teacher (the public code's bug)."""
    scores = {("AtoB", 0): 10.0, ("BtoA", 0): 10.0, ("AtoB", 1): 12.0, ("BtoA", 1): 5.0}
    snapshots, rounds = {}, Counter()

    class FakeScorer:  # a scorer passed in: the Distiller never builds the Inception one
        def score(self, generator, direction):
            rnd = rounds[direction]
            rounds[direction] += 1
            if direction == "AtoB":
                snapshots[rnd] = weights(generator)
            return scores[(direction, rnd)]

    small = {"kind": "unpaired", "size": 32, "count": 8, "seed": 0}
    r = tiny_recipe(tmp_path, data={"synth": small},
                    train={"teacher_select": "fid", "teacher_epochs": 2, "teacher_epochs_decay": 0})
    distill.prepare_data(r)
    d = Distiller(r, teacher_scorer=FakeScorer())
    d.run()
    assert d.progress.best_fid == {"AtoB": 10.0, "BtoA": 5.0}
    assert same(weights(d.best_G_A), snapshots[0]) and not same(snapshots[0], snapshots[1])
    assert same(weights(load_generator(tmp_path / "run" / "teacher.safetensors")), snapshots[0])


def test_teacher_scorer_computes_fid_with_cached_real_stats(tmp_path, monkeypatch):
    from crdtool.metrics import fid as fidlib
    from crdtool.train.teacher_select import TeacherScorer

    # A stand-in feature extractor (16-d): the Inception itself is tested in test_fid.py; here the plumbing
    # (translation, uint8 rounding, cached real statistics, Frechet distance) is what is checked.
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 16))
    monkeypatch.setattr(fidlib, "load_inception", lambda path=None: tiny)
    monkeypatch.setattr(fidlib, "INCEPTION_SIZE", 32)
    r = tiny_recipe(tmp_path)
    distill.prepare_data(r)
    scorer = TeacherScorer(r.data.root, 32, tmp_path, n_images=4)
    g = build_generator("resnet", 4, n_blocks=2)
    a = scorer.score(g, "AtoB")
    assert a > 0 and (tmp_path / "fid_real_B_32px.npz").is_file()
    assert scorer.score(g, "AtoB") == pytest.approx(a)  # deterministic, real stats reused


def _folder_teacher_recipe(tmp_path, norm: str, cache: str):
    """A pretrained teacher with ``norm`` layers on a plain folder of photos, in batches of 2."""
    import numpy as np
    from PIL import Image

    from crdtool.models.checkpoints import save_generator

    photos = tmp_path / "photos"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    torch.manual_seed(3)
    save_generator(build_generator("resnet", 4, n_blocks=1, norm=norm), tmp_path / "teacher.safetensors")
    return tiny_recipe(tmp_path, data_root=photos,
                       data={"layout": "folder", "synth": None, "load_size": 36, "crop_size": 32, "batch_size": 2,
                             "eval_images": 1},
                       teacher={"arch": "resnet", "ngf": 4, "n_blocks": 1, "norm": norm,
                                "checkpoint": str(tmp_path / "teacher.safetensors")},
                       discriminator={"ndf": 4, "student": "none"},
                       train={"student_epochs": 1, "eval_every": 1000, "teacher_cache": cache})


@pytest.mark.parametrize("cache", ["auto", "memory"])
def test_teacher_cache_is_bypassed_for_a_batch_statistics_teacher(tmp_path, cache):
    """A BatchNorm teacher normalising with batch statistics answers per batch, not per image: no cache."""
    d = Distiller(_folder_teacher_recipe(tmp_path, "batch", cache))
    assert d.teacher_cache is None
    assert any("teacher cache: off" in n and "batchnorm_stats" in n for n in d.notes)
    batch = next(iter(d._batches("student", 0, 0)))
    x = batch["A"]
    with torch.no_grad():
        together = d.G_A(x)  # batch statistics of both crops
        alone = d.G_A(x[:1])
    assert not torch.allclose(together[:1], alone, atol=1e-3), "the batch must matter for this teacher"
    out, features = d.steps["student"].teacher_outputs(batch, x)
    torch.testing.assert_close(out, together)
    assert features is None  # no feature distillation


def test_teacher_cache_still_serves_an_instance_norm_teacher(tmp_path):
    d = Distiller(_folder_teacher_recipe(tmp_path, "instance", "memory"))
    assert d.teacher_cache is not None and not any("teacher cache: off" in n for n in d.notes)


def test_online_teacher_cache_translates_each_image_once_per_round(tmp_path):
    """An online CycleGAN teacher is frozen through a round's student epochs, so the cache serves its outputs
    there; the next round's teacher is translated afresh, never answered with the last round's outputs."""
    from crdtool.train.teacher_cache import crop, weights_digest

    r = tiny_recipe(tmp_path, train={"teacher_epochs": 1, "teacher_epochs_decay": 1, "round_epochs": 1,
                                     "student_epochs_per_round": 2, "teacher_cache": "memory"},
                    data={"flip": False})  # one view per image (a mirrored crop is the mirrored image's entry)
    distill.prepare_data(r)
    d = Distiller(r)
    assert any("once per round" in n for n in d.notes)
    images = len(d.train_set)
    d.run()
    cache = d.teacher_cache
    # two rounds; in each, the first student epoch translates every image and the second reuses them all
    assert cache.misses == 2 * images and cache.hits == 2 * images
    assert cache.digest == weights_digest(d.nets.teacher)
    # what the student is given: the teacher's output of the whole resized image, cut where A was cut
    batch = first_batch(d)
    served, _ = d.steps["student"].teacher_outputs(batch, batch["A"])
    from crdtool.data.images import load_image
    from crdtool.data.transforms import eval_transform

    top, left, flip = batch["A_crop"][0].tolist()
    with torch.no_grad():
        whole = d.nets.teacher.eval()(eval_transform(load_image(batch["A_path"][0]), r.data.load_size)[None])
    torch.testing.assert_close(served[0], crop(whole[0], top, left, r.data.crop_size, bool(flip)),
                               atol=2e-3, rtol=0)  # float16 storage


def test_online_teacher_cache_choices(tmp_path):
    """auto leaves an online teacher uncached (as before); disk is refused with one line that says why."""
    r = tiny_recipe(tmp_path)
    distill.prepare_data(r)
    assert Distiller(r).teacher_cache is None
    with pytest.raises(CrdError, match='teacher_cache = "disk".*online'):
        Distiller(tiny_recipe(tmp_path, train={"teacher_cache": "disk"}))


def test_spectral_term_and_aligned_unflipped_crops_from_the_recipe(tmp_path):
    """loss.lambda_spectral adds the weighted high-band amplitude term to the student's loss;
    data.crop_align and data.flip reach the training set's crops."""
    from crdtool.losses import SpectralAmplitudeLoss

    r = tiny_recipe(tmp_path, loss={"lambda_spectral": 5.0, "spectral_min_freq": 0.2},
                    data={"crop_align": 4, "flip": False})
    distill.prepare_data(r)
    d = Distiller(r)
    assert isinstance(d.steps["student"].ctx.criteria.spectral, SpectralAmplitudeLoss)
    batch = first_batch(d)
    crops = batch["A_crop"]
    assert (crops[:, :2] % 4 == 0).all() and (crops[:, 2] == 0).all()
    teacher_out, _ = d.steps["student"].teacher_outputs(batch, batch["A"])
    with torch.no_grad():
        s, terms = d.steps["student"].terms(batch["A"], teacher_out)
        expected = 5.0 * SpectralAmplitudeLoss(0.2)(s, teacher_out)
    torch.testing.assert_close(terms["spectral"], expected)
    assert "spectral" in d.student_step(batch)
    plain = Distiller(tiny_recipe(tmp_path, train={"teacher_epochs": 2}))
    assert plain.steps["student"].ctx.criteria.spectral is None
