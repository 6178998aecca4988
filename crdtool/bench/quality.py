"""Quality of an artifact: FID/KID of its own translations of the test split, and fidelity to PyTorch.

FID is computed on what the artifact itself produces (the ONNX / INT8 / engine file, not the PyTorch
model it came from), so export and quantization losses show up. Fidelity (PSNR over the [-1, 1]
range, max abs) against the PyTorch fp32 model needs no Inception weights.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from PIL import Image

from crdtool.errors import CrdError
from crdtool.metrics import fid as fidlib

if TYPE_CHECKING:
    from crdtool.recipe import Recipe


def parity_to_reference(reference: torch.Tensor, output: torch.Tensor):
    """Parity (max_abs, mean_abs, pooled psnr_db, n_images) of ``output`` against ``reference``, in [-1, 1]."""
    from crdtool.deploy.onnx import measure_parity

    return measure_parity(reference.detach().float().cpu().numpy(), output.detach().float().cpu().numpy())


@dataclass
class EvalSplit:
    """Source images to translate and the real target-domain images they are compared with."""

    source: list[Path]
    real: list[Path]
    aligned: bool  # pix2pix A|B side-by-side files: source and real are halves of the same files
    direction: str
    description: str
    reference: Path | None = None  # a generator whose translations of ``source`` are the real set (no B images)


def eval_split(root: str | Path, direction: str = "AtoB") -> EvalSplit:
    """The test split under ``root`` (``data.splits.find_test_split``) with its real target images."""
    from crdtool.data.images import list_images
    from crdtool.data.splits import find_test_split

    split = find_test_split(root, direction)
    if split.target is None:
        raise CrdError(f"no test split under {root}: {split.source.name}/ has no {split.source.name[:-1]}"
                       f"{'B' if split.side == 'A' else 'A'}/ of real target images next to it")
    source = list_images(split.source)
    if split.aligned:
        return EvalSplit(source, source, True, direction, f"{split.source} (A|B halves, {direction})")
    return EvalSplit(source, list_images(split.target), False, direction,
                     f"{split.source} -> compared with {split.target}")


def teacher_split(run: str | Path, recipe: Recipe | None = None) -> EvalSplit | None:
    """For a run trained on a plain folder of photos (``data.layout = "folder"``): its held-out photos, with
    the run's teacher translating them as the real set, the reference such a run was distilled toward.
    None for other runs. Without this, a folder that happens to sit in a dataset would be scored against
    that dataset's target domain, which the teacher may never have seen."""
    from crdtool.data.folder import folder_split
    from crdtool.recipe import load_recipe

    run = Path(run)
    r = recipe if recipe is not None else load_recipe(run / "recipe.toml")
    if r.data.layout != "folder":
        return None
    teacher = run / "teacher.safetensors"
    if not teacher.is_file():
        raise CrdError(f"{run}: a folder-layout run is scored against its teacher, but {teacher.name} is missing")
    files, how = folder_split(r.data.root, "test", r.data.test_fraction)
    return EvalSplit(files, [], False, "AtoB", f"{how} -> compared with the teacher's translations of them",
                     reference=teacher)


def iter_split_images(files: list[Path], aligned: bool, side: str, n: int | None,
                      size: int | None = None) -> Iterator[tuple[Path, Image.Image]]:
    """(path, RGB image) of the first ``n`` readable files (the ``side`` half when aligned), resized to ``size``."""
    from crdtool.data.images import iter_readable
    from crdtool.data.splits import aligned_half

    for p, img in iter_readable(files, n):
        if aligned:
            img = aligned_half(img, side)
        if size is not None:
            img = img.resize((size, size), Image.BICUBIC)
        yield p, img


def translate_split(runner, split: EvalSplit, size: int = 256, batch: int = 1, n: int | None = None
              ) -> Iterator[torch.Tensor]:
    """uint8 (N, 3, size, size) batches of the runner's translations of the split's source images."""
    from crdtool.data.images import to_tensor

    side = "A" if split.direction == "AtoB" else "B"
    batch = runner.fixed_batch or batch
    pending: list[torch.Tensor] = []

    def flush() -> torch.Tensor:
        k = len(pending)
        x = torch.stack(pending + [pending[-1]] * (batch - k))  # a static batch is padded, the padding dropped
        pending.clear()
        return fidlib.to_uint8_images(runner(x)[:k])

    for _, img in iter_split_images(split.source, split.aligned, side, n, size):
        pending.append(to_tensor(img))
        if len(pending) == batch:
            yield flush()
    if pending:
        yield flush()


def real_features(split: EvalSplit, model: torch.nn.Module, n: int | None = None, batch_size: int = 16,
                  size: int = 256):
    """Inception features of the split's real target images at their own resolution (docs/fid.md), or of
    the reference generator's translations of the source images at ``size`` (the artifact's own size)."""
    import numpy as np

    if split.reference is not None:
        from crdtool.bench.dispatch import make_runner
        from crdtool.bench.runners import parse_backend

        runner = make_runner(split.reference, parse_backend("torch-cpu"), 1, size)
        return fidlib.extract_features(model, translate_split(runner, split, size, 1, n), batch_size)
    side = "B" if split.direction == "AtoB" else "A"
    imgs = (torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
            for _, img in iter_split_images(split.real, split.aligned, side, n))
    return fidlib.extract_features(model, imgs, batch_size)


@dataclass
class QualityResult:
    artifact: str
    name: str
    backend: str
    precision: str
    fid: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    n_fake: int = 0
    n_real: int | None = None
    data: str = ""
    real: str = ""
    inception: str = ""
    size: int = 256
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_real(split: EvalSplit | None, model: torch.nn.Module, real_stats: str | Path | None = None,
              n: int | None = None, size: int = 256) -> tuple[fidlib.FIDStats, str]:
    """Real statistics from a stats file (published npz or ours) or from the split's real images."""
    if real_stats is not None:
        return fidlib.load_stats(real_stats), str(real_stats)
    if split is None:
        raise CrdError("FID needs --data ROOT (a test split) or --real-stats FILE")
    feats = real_features(split, model, n, size=size)
    what = "teacher translations" if split.reference is not None else "real images"
    return fidlib.stats_from_features(feats), f"{len(feats)} {what} ({split.description})"


def evaluate_fid(artifact: str | Path, backend: str = "auto", data: str | Path | None = None,
                 direction: str = "AtoB", inception: torch.nn.Module | str | Path | None = None,
                 real: fidlib.FIDStats | str | Path | None = None, n: int | None = None, size: int = 256,
                 batch: int = 1, threads: int | None = None, onnx: str | Path | None = None,
                 name: str | None = None, split: EvalSplit | None = None) -> QualityResult:
    """Translate the test split with ``artifact`` on ``backend`` and score it with FID (and KID when real
    features are at hand). ``real`` is precomputed statistics, a stats file, or None (computed from ``data``).
    """
    from crdtool.bench.env import physical_cores
    from crdtool.bench.dispatch import make_runner
    from crdtool.bench.runners import artifact_kind, default_backend, parse_backend

    t0 = time.perf_counter()
    be = default_backend(artifact_kind(artifact)) if backend == "auto" else parse_backend(backend)
    model = inception if isinstance(inception, torch.nn.Module) else fidlib.load_inception(inception)
    inception_desc = "given module" if isinstance(inception, torch.nn.Module) else str(
        fidlib.resolve_inception_path(inception))
    if split is None:
        if data is None:
            raise CrdError("FID needs --data ROOT: the test split the artifact translates")
        split = eval_split(data, direction)
    if isinstance(real, fidlib.FIDStats):
        real_stats, real_desc = real, "precomputed statistics"
    else:
        real_stats, real_desc = load_real(split, model, real, n, size)
    torch.set_num_threads(threads or physical_cores())
    runner = make_runner(artifact, be, batch, size, threads, onnx)
    fake = fidlib.extract_features(model, translate_split(runner, split, size, batch, n))
    fake_stats = fidlib.stats_from_features(fake)
    result = QualityResult(str(artifact), name or Path(artifact).name, be.label, runner.precision,
                           n_fake=len(fake), n_real=real_stats.n, data=split.description, real=real_desc,
                           inception=inception_desc, size=size)
    result.fid = fidlib.fid_from_stats(fake_stats, real_stats)
    if real_stats.features is not None:
        result.kid_mean, result.kid_std = fidlib.kernel_inception_distance(fake, real_stats.features)
        if len(fake) <= fidlib.KID_SUBSET_SIZE and len(real_stats.features) <= fidlib.KID_SUBSET_SIZE:
            result.kid_std = None  # every subset is the whole of both sets: one value, no spread to report
    result.seconds = time.perf_counter() - t0
    return result
