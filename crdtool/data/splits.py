"""Where a dataset's evaluation images are, and the halves of a paired A|B file: one rule for every caller.

Distillation's evaluation, export verification, benchmark inputs and FID all look for "the test split";
they must agree on which folder that is, or the numbers they print describe different images.

- unaligned (CycleGAN): ``test{A,B}/``, else ``val{A,B}/``;
- aligned (pix2pix, A|B side by side in one file): ``val/``, else ``test/`` (pix2pix datasets such as
  edges2shoes ship ``train/`` + ``val/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from crdtool.errors import CrdError

UNALIGNED_PHASES = ("test", "val")
ALIGNED_PHASES = ("val", "test")


@dataclass(frozen=True)
class TestSplit:
    """The evaluation split of a dataset root, for one translation direction."""

    __test__ = False  # not a pytest class, despite the name

    phase: str  # "test" or "val"
    source: Path  # the input domain's images (aligned: the A|B files)
    target: Path | None  # the target domain's images (aligned: the same files); None when absent
    aligned: bool
    side: str  # the input domain's letter, "A" or "B"; the target is the other one


def source_side(direction: str) -> str:
    """``"A"`` for AtoB, ``"B"`` for BtoA; anything else is a one-line error."""
    if direction not in ("AtoB", "BtoA"):
        raise CrdError(f"direction must be AtoB or BtoA, got {direction!r}")
    return "A" if direction == "AtoB" else "B"


def find_test_split(root: str | Path, direction: str = "AtoB",
                    layout: Literal["unaligned", "aligned"] | None = None) -> TestSplit:
    """The evaluation split under ``root``; ``layout=None`` accepts either (unaligned tried first)."""
    root = Path(root)
    src = source_side(direction)
    tgt = "B" if src == "A" else "A"
    if layout in (None, "unaligned"):
        for phase in UNALIGNED_PHASES:
            if (root / f"{phase}{src}").is_dir():
                target = root / f"{phase}{tgt}"
                return TestSplit(phase, root / f"{phase}{src}", target if target.is_dir() else None, False, src)
    if layout in (None, "aligned"):
        for phase in ALIGNED_PHASES:
            if (root / phase).is_dir():
                return TestSplit(phase, root / phase, root / phase, True, src)
    wanted = {"unaligned": f"test{src}/ or val{src}/", "aligned": "val/ or test/ of A|B images"}
    expected = " (unaligned), or ".join(v for k, v in wanted.items() if layout in (None, k))
    raise CrdError(f"no test split under {root}: expected {expected}")



def aligned_halves(ab: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(left, right) halves of a pix2pix A|B file: A is the left half."""
    w, h = ab.size
    return ab.crop((0, 0, w // 2, h)), ab.crop((w // 2, 0, w, h))


def aligned_half(ab: Image.Image, side: str) -> Image.Image:
    """The ``side`` ("A": left, "B": right) half of a pix2pix A|B file."""
    left, right = aligned_halves(ab)
    return left if side == "A" else right
