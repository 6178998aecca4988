"""Benchmark inputs: real images (a folder, a dataset root, or a run's recipe test split), else smooth noise.

Never zeros: some kernels (denormals, sparse paths) run at different speeds on constant inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from crdtool.data.synth import smooth_noise_images
from crdtool.errors import CrdError

if TYPE_CHECKING:
    from crdtool.recipe import Recipe


def find_image_folder(path: str | Path, direction: str = "AtoB") -> Path:
    """A folder of images itself, else a dataset root's test split (``data.splits.find_test_split``), else its
    training images (train{A,B}/ or train/)."""
    from crdtool.data.images import IMAGE_EXTENSIONS
    from crdtool.data.splits import find_test_split, source_side

    p = Path(path)
    if not p.is_dir():
        raise CrdError(f"image folder not found: {p}")

    def has_images(d: Path) -> bool:
        return d.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir())

    if has_images(p):
        return p
    try:
        split = find_test_split(p, direction)
        if has_images(split.source):
            return split.source
    except CrdError:
        pass
    src = source_side(direction)
    for sub in (f"train{src}", "train"):
        if has_images(p / sub):
            return p / sub
    raise CrdError(f"no images in {p} nor in its test{src}/, val{src}/, val/, test/, train{src}/ or train/ folders")


def run_folder_of(artifact: str | Path) -> Path | None:
    """The run folder an artifact belongs to: itself, the folder of a file in it, or of its ``export/``."""
    p = Path(artifact)
    for run in ([p] if p.is_dir() else []) + [p.parent, p.parent.parent]:
        if (run / "recipe.toml").is_file():
            return run
    return None


def recipe_test_folder(artifact: str | Path, recipe: Recipe | None = None) -> Path | None:
    """The test split named by the ``recipe.toml`` of the artifact's run folder (or by ``recipe``, that file
    already read), if any (best effort)."""
    run = run_folder_of(artifact)
    if run is None:
        return None
    try:
        from crdtool.recipe import load_recipe

        r = recipe if recipe is not None else load_recipe(run / "recipe.toml")
        return find_image_folder(r.data.root, r.data.direction)
    except (CrdError, ImportError, AttributeError, OSError):
        return None


def input_pool(n_images: int, size: int, images: str | Path | None = None, artifact: str | Path | None = None,
               channels: int = 3) -> tuple[torch.Tensor, str]:
    """(N, C, size, size) inputs in [-1, 1] and a description of where they came from."""
    from crdtool.data.images import load_folder_tensor

    folder = find_image_folder(images) if images else (recipe_test_folder(artifact) if artifact else None)
    if folder is not None and channels == 3:
        x = load_folder_tensor(folder, size, n_images)
        from crdtool.data.synth import MANIFEST as SYNTH_MANIFEST

        made = (folder.parent / SYNTH_MANIFEST).is_file()  # a dataset `crdtool data synth` generated
        desc = (f"{len(x)} {'generated (crdtool data synth)' if made else 'real'} images from {folder}, "
                f"bicubic-resized to {size}x{size}")
        if len(x) < n_images:
            x = x.repeat((n_images + len(x) - 1) // len(x), 1, 1, 1)[:n_images]
        return x, desc
    desc = f"{n_images} synthetic smooth-noise images (seed 0, no image folder given)"
    return smooth_noise_images(n_images, size, channels), desc
