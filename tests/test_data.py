"""Data package: synthetic data, datasets, transforms, bad files, reproducible loading, real data."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from crdtool.commands.data import data_app
from crdtool.data import (AlignedDataset, UnalignedDataset, build_dataset, make_loader, make_synthetic_dataset,
                          synth_matches, test_phase)
from crdtool.data import synth as synth_mod
from crdtool.data.images import BadImageWarning
from crdtool.errors import CrdError

SMALL = dict(load_size=36, crop_size=32)


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("u") / "ds", "unpaired", size=32, count=8, seed=1)


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("p") / "ds", "paired", size=32, count=8, seed=1)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- synthetic data ---------------------------------------------------------------------------------

def test_synth_layouts(unpaired: Path, paired: Path):
    counts = {d.name: len(list(d.glob("*.png"))) for d in unpaired.iterdir() if d.is_dir()}
    assert counts == {"trainA": 8, "trainB": 8, "testA": 4, "testB": 4}
    assert Image.open(unpaired / "trainA" / "0000.png").size == (32, 32)
    counts = {d.name: len(list(d.glob("*.png"))) for d in paired.iterdir() if d.is_dir()}
    assert counts == {"train": 8, "val": 4}
    ab = np.asarray(Image.open(paired / "train" / "0000.png"))
    assert ab.shape == (32, 64, 3)
    a, b = ab[:, :32], ab[:, 32:]
    assert set(np.unique(a)) <= {0, 255} and a.max() == 255  # edge map: white lines on black
    assert (a == 255).mean() < 0.3 and (b == 255).all(axis=2).mean() > 0.2  # sparse edges; white background
    meta = json.loads((paired / "synth.json").read_text())
    assert meta["version"] == 1 and meta["kind"] == "paired" and meta["seed"] == 1 and meta["size"] == 32
    # domain B is striped: far more high-contrast neighbouring pixels than domain A
    def contrast(folder):
        x = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in sorted(folder.glob("*.png"))])
        return np.abs(np.diff(x.mean(-1), axis=2)).mean()
    assert contrast(unpaired / "trainB") > 2 * contrast(unpaired / "trainA")


def test_synth_deterministic_and_reused(tmp_path: Path):
    a = make_synthetic_dataset(tmp_path / "a", "unpaired", size=24, count=4, seed=3)
    b = make_synthetic_dataset(tmp_path / "b", "unpaired", size=24, count=4, seed=3)
    c = make_synthetic_dataset(tmp_path / "c", "unpaired", size=24, count=4, seed=4)
    assert _tree_bytes(a) == _tree_bytes(b)
    assert _tree_bytes(a)["trainA/0000.png"] != _tree_bytes(c)["trainA/0000.png"]
    assert synth_matches(a, "unpaired", 24, 4, 3) and not synth_matches(a, "unpaired", 24, 5, 3)
    stamp = (a / "trainA" / "0000.png").stat().st_mtime_ns
    make_synthetic_dataset(a, "unpaired", size=24, count=4, seed=3)  # matches: reused, untouched
    assert (a / "trainA" / "0000.png").stat().st_mtime_ns == stamp
    make_synthetic_dataset(a, "paired", size=24, count=4, seed=3)  # ours, different params: replaced
    assert sorted(p.name for p in a.iterdir()) == ["synth.json", "train", "val"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_synth_interrupted_leaves_nothing_and_refuses_foreign(tmp_path: Path, monkeypatch):
    real = synth_mod._write_split

    def flaky(folder, kind, split, *args):
        if split == "testA":
            raise KeyboardInterrupt
        real(folder, kind, split, *args)

    monkeypatch.setattr(synth_mod, "_write_split", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_dataset(tmp_path / "x", "unpaired", size=16, count=4)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synth_mod, "_write_split", real)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    with pytest.raises(CrdError, match="refusing to overwrite"):
        make_synthetic_dataset(tmp_path / "mine", "unpaired", size=16, count=4)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "user data"


def test_synth_cli(tmp_path: Path):
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    app.command("noop")(lambda: None)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "synth", str(tmp_path / "s"), "--kind", "paired", "--size", "16",
                              "--count", "4", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "train 4" in res.output and "val 4" in res.output
    assert synth_matches(tmp_path / "s", "paired", 16, 4, 2)
    res = runner.invoke(app, ["data", "synth", str(tmp_path / "s"), "--kind", "zebra"])
    assert res.exit_code == 1 and res.output.strip().count("\n") == 0 and "zebra" in res.output


# ---- datasets ----------------------------------------------------------------------------------------

def test_unaligned_shapes_range_and_length(unpaired: Path, tmp_path: Path):
    ds = UnalignedDataset(unpaired, "train", seed=0, **SMALL)
    s = ds[0]
    assert set(s) == {"A", "B", "A_path", "B_path", "A_crop"}
    # A_crop says where A was cut: the same cut of the whole resized image (what a teacher cache relies on)
    from crdtool.data.images import load_image
    from crdtool.data.transforms import eval_transform
    from crdtool.train.teacher_cache import crop

    for i in range(4):
        item = ds[i]
        top, left, flip = item["A_crop"].tolist()
        whole = eval_transform(load_image(item["A_path"]), SMALL["load_size"])
        assert torch.equal(crop(whole, top, left, SMALL["crop_size"], bool(flip)), item["A"])
    assert set(UnalignedDataset(unpaired, "test", train=False, seed=0, **SMALL)[0]) == {"A", "B", "A_path", "B_path"}
    for k in "AB":
        assert s[k].shape == (3, 32, 32) and s[k].dtype == torch.float32
        assert -1.0 <= s[k].min() < s[k].max() <= 1.0
    assert Path(s["A_path"]).parent.name == "trainA" and Path(s["B_path"]).parent.name == "trainB"
    # length = max(len A, len B); A cycles
    root = tmp_path / "lop"
    shutil.copytree(unpaired, root)
    for p in sorted((root / "trainB").glob("*.png"))[3:]:
        p.unlink()
    ds = UnalignedDataset(root, "train", **SMALL)
    assert len(ds) == 8 and len(ds.files_B) == 3
    ev = UnalignedDataset(root, "train", train=False, **SMALL)
    assert Path(ev[5]["B_path"]).name == "0002.png"  # 5 % 3
    assert UnalignedDataset(unpaired, "train", max_size=2, **SMALL).__len__() == 2
    with pytest.raises(IndexError):
        ds[8]


def test_same_key_same_sample_and_epoch_changes_crop(unpaired: Path):
    d1 = UnalignedDataset(unpaired, "train", seed=7, **SMALL)
    d2 = UnalignedDataset(unpaired, "train", seed=7, **SMALL)
    d2.set_epoch(3)
    for i in (0, 5):
        x, y = d1[(3, i)], d2[i]
        assert torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"]) and x["B_path"] == y["B_path"]
    changed = [not torch.equal(d1[(0, i)]["A"], d1[(1, i)]["A"]) for i in range(8)]
    assert sum(changed) >= 4  # 5x5 offsets x flip: a repeat for most of 8 samples would be a bug
    other_seed = UnalignedDataset(unpaired, "train", seed=8, **SMALL)
    assert any(not torch.equal(d1[i]["A"], other_seed[i]["A"]) for i in range(8))
    ev = UnalignedDataset(unpaired, "test", train=False, **SMALL)
    e0 = ev[1]["A"]
    ev.set_epoch(5)
    assert torch.equal(e0, ev[1]["A"]) and e0.shape == (3, 32, 32)


def _asymmetric(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * y) % 256], -1).astype(np.uint8)


def test_aligned_pair_shares_crop_and_flip(tmp_path: Path):
    root = tmp_path / "pairs"
    (root / "train").mkdir(parents=True)
    half = _asymmetric(40, 40)
    for i in range(6):
        Image.fromarray(np.concatenate([half, half], axis=1)).save(root / "train" / f"{i}.png")
    ds = AlignedDataset(root, "train", load_size=40, crop_size=32, seed=0)
    crops = []
    for epoch in range(3):
        for i in range(6):
            s = ds[(epoch, i)]
            assert s["A"].shape == (3, 32, 32) and torch.equal(s["A"], s["B"])
            crops.append(s["A"])
    distinct = {c.numpy().tobytes() for c in crops}
    assert len(distinct) > 6  # crop offsets and flips actually vary
    flipped = [c for c in crops if c[0, 0, 0] > c[0, 0, -1]]  # red rises with x unless flipped
    assert 0 < len(flipped) < len(crops)


def test_aligned_split_and_direction(paired: Path):
    ab = AlignedDataset(paired, "val", train=False, **SMALL)
    ba = AlignedDataset(paired, "val", train=False, direction="BtoA", **SMALL)
    s, t = ab[0], ba[0]
    assert s["A"].shape == s["B"].shape == (3, 32, 32)
    assert torch.equal(s["A"], t["B"]) and torch.equal(s["B"], t["A"])
    # AtoB: A is the edge map (mostly black), B the shape on white
    assert s["A"].mean() < -0.5 < s["B"].mean()
    tr_ab = AlignedDataset(paired, "train", seed=4, **SMALL)
    tr_ba = AlignedDataset(paired, "train", seed=4, direction="BtoA", **SMALL)
    assert torch.equal(tr_ab[2]["A"], tr_ba[2]["B"])


def test_unaligned_direction_swap(unpaired: Path):
    ab = UnalignedDataset(unpaired, "test", train=False, **SMALL)
    ba = UnalignedDataset(unpaired, "test", train=False, direction="BtoA", **SMALL)
    assert Path(ba[0]["A_path"]).parent.name == "testB" and Path(ba[0]["B_path"]).parent.name == "testA"
    assert torch.equal(ab[1]["A"], ba[1]["B"]) and torch.equal(ab[1]["B"], ba[1]["A"])
    with pytest.raises(CrdError, match="direction"):
        UnalignedDataset(unpaired, direction="sideways")


def test_bad_files_reported_and_epoch_completes(unpaired: Path, tmp_path: Path):
    root = tmp_path / "bad"
    shutil.copytree(unpaired, root)
    jpg = root / "trainA" / "0002.jpg"  # sorts just before 0002.png: index 2
    Image.fromarray(_asymmetric(32, 32)).save(jpg, quality=90)
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    (root / "trainA" / "0005.png").write_text("not an image")
    ds = UnalignedDataset(root, "train", seed=0, **SMALL)
    assert len(ds) == 9
    with pytest.warns(BadImageWarning) as rec:
        batches = list(make_loader(ds, batch_size=3, shuffle=True, seed=0, epoch=0))
    assert len(batches) == 3 and all(b["A"].shape == (3, 3, 32, 32) for b in batches)
    assert sorted(Path(p).name for p in ds.bad_files) == ["0002.jpg", "0005.png"]
    assert len(rec) == 2 and "0002.jpg" in str(rec[0].message) + str(rec[1].message)
    # substitute = next readable file, deterministically; no repeated warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Path(ds[2]["A_path"]).name == "0002.png"  # index 2 is the truncated jpg
        assert Path(ds[6]["A_path"]).name == "0006.png"  # index 6 is the text file (0005.png)
    assert len(ds.bad_files) == 2


def test_no_readable_image_is_an_error(tmp_path: Path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.png").write_bytes(b"\x89PNG junk")
    ds = AlignedDataset(tmp_path, "train", **SMALL)
    with pytest.warns(BadImageWarning), pytest.raises(CrdError, match="no readable images"):
        ds[0]


def test_missing_folder_error_is_one_line(unpaired: Path, tmp_path: Path):
    with pytest.raises(CrdError) as e:
        UnalignedDataset(tmp_path, "train")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "trainA") in msg and "trainB" in msg
    with pytest.raises(CrdError) as e:
        build_dataset("aligned", unpaired, "val")
    assert "\n" not in str(e.value) and str(unpaired / "val") in str(e.value)
    with pytest.raises(CrdError, match="layout"):
        build_dataset("paired", unpaired)
    with pytest.raises(CrdError, match="load_size"):
        build_dataset("unaligned", unpaired, load_size=30, crop_size=32)


def test_build_dataset_and_test_phase(unpaired: Path, paired: Path, tmp_path: Path):
    assert test_phase("unaligned", unpaired) == "test"
    assert test_phase("aligned", paired) == "val"
    (tmp_path / "test").mkdir()
    assert test_phase("aligned", tmp_path) == "test"
    with pytest.raises(CrdError, match="val"):
        test_phase("aligned", tmp_path / "nothing")
    tr = build_dataset("unaligned", unpaired, "train", **SMALL)
    ev = build_dataset("aligned", paired, test_phase("aligned", paired), **SMALL)
    assert isinstance(tr, UnalignedDataset) and tr.train and isinstance(ev, AlignedDataset) and not ev.train


# ---- loader ------------------------------------------------------------------------------------------

def test_loader_order_reproducible_and_resumable(unpaired: Path):
    ds = UnalignedDataset(unpaired, "train", seed=0, max_size=8, **SMALL)

    def run(epoch, skip=0, workers=0):
        return list(make_loader(ds, 2, True, seed=5, epoch=epoch, skip_batches=skip, num_workers=workers))

    rng_before = torch.get_rng_state()
    first, again = run(1), run(1)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert [b["A_path"] for b in first] == [b["A_path"] for b in again]
    assert all(torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"]) for x, y in zip(first, again))
    assert [b["A_path"] for b in run(2)] != [b["A_path"] for b in first]
    resumed = run(1, skip=2)
    assert len(resumed) == 2
    assert all(torch.equal(x["A"], y["A"]) and x["B_path"] == y["B_path"] for x, y in zip(first[2:], resumed))
    plain = list(make_loader(ds, 3, False, seed=5, epoch=0, drop_last=False))
    assert [len(b["A_path"]) for b in plain] == [3, 3, 2]
    assert [Path(p).name for p in plain[0]["A_path"]] == ["0000.png", "0001.png", "0002.png"]


def test_loader_same_batches_with_workers(unpaired: Path):
    ds = UnalignedDataset(unpaired, "train", seed=0, **SMALL)
    serial = list(make_loader(ds, 4, True, seed=1, epoch=3))
    parallel = list(make_loader(ds, 4, True, seed=1, epoch=3, num_workers=2))
    assert all(torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"]) for x, y in zip(serial, parallel))


# ---- real data -----------------------------------------------------------------------------------------

def test_real_cat2dog_non_square(shared_data: Path):
    root = shared_data / "cat2dog"
    assert Image.open(sorted((root / "trainA").iterdir())[0]).size == (178, 218)
    ds = build_dataset("unaligned", root, "train", load_size=72, crop_size=64, seed=0)
    assert len(ds) == max(len(ds.files_A), len(ds.files_B)) > 100
    s = ds[10]
    assert s["A"].shape == s["B"].shape == (3, 64, 64) and s["A"].std() > 0.05
    ev = build_dataset("unaligned", root, test_phase("unaligned", root), load_size=72, crop_size=64)
    assert ev[0]["A"].shape == (3, 64, 64) and not ev.train and ds.bad_files == [] and ev.bad_files == []


def test_real_person_contour_aligned(shared_data: Path):
    root = shared_data / "person_contour"
    phase = test_phase("aligned", root)
    assert phase == "val"
    ds = build_dataset("aligned", root, phase, load_size=72, crop_size=64, direction="BtoA")
    s = ds[0]
    assert s["A"].shape == s["B"].shape == (3, 64, 64)
    # BtoA: A is the contour drawing (right half, grey: channels equal), B the colour photo (left half)
    def colour(t):
        return float((t.max(0).values - t.min(0).values).mean())
    assert colour(s["A"]) < 0.005 < 0.02 < colour(s["B"])
    tr = build_dataset("aligned", root, "train", load_size=72, crop_size=64, seed=0)
    assert tr[(0, 1)]["A"].shape == (3, 64, 64) and colour(tr[(0, 1)]["A"]) > 0.02  # AtoB: A = photo


@pytest.mark.parametrize("layout", ["unaligned", "aligned"])
def test_crop_align_and_no_flip_keep_the_draws(unpaired: Path, paired: Path, layout: str):
    """crop_align rounds each sample's offsets down (the same draws, so nothing else moves); flip=False
    leaves every crop unflipped; an A_crop still cuts the whole image into exactly the returned A."""
    root = unpaired if layout == "unaligned" else paired
    small = dict(load_size=44, crop_size=32)  # slack 12: offsets 0..12
    plain = build_dataset(layout, root, "train", seed=3, **small)
    tied = build_dataset(layout, root, "train", seed=3, crop_align=4, flip=False, **small)
    from crdtool.data.transforms import sample_rng

    flips = 0
    for i in range(8):
        a = plain.draw(sample_rng(3, 0, i))
        b = tied.draw(sample_rng(3, 0, i))
        assert (b.x, b.y) == (a.x - a.x % 4, a.y - a.y % 4) and not b.flip
        flips += a.flip
    assert flips > 0  # the plain draws did flip some: the test would notice flip=False being ignored
    if layout == "unaligned":
        from crdtool.data.images import load_image
        from crdtool.data.transforms import eval_transform
        from crdtool.train.teacher_cache import crop

        for i in range(4):
            item = tied[i]
            top, left, flip = item["A_crop"].tolist()
            assert top % 4 == 0 and left % 4 == 0 and flip == 0
            whole = eval_transform(load_image(item["A_path"]), 44)
            assert torch.equal(crop(whole, top, left, 32, False), item["A"])
    with pytest.raises(CrdError, match="crop_align"):
        build_dataset(layout, root, "train", crop_align=0, **small)
