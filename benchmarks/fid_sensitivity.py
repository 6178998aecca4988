"""What do FID and KID to the vintagify teacher reward? Known edits of the teacher's own output, scored
the two ways benchmarks/real_teacher.py scores its students.

Rows (each scored against the teacher's outputs):

  input                    the untranslated photo
  colour_per_image         a 3x3 + offset colour map fitted per photo from input to teacher (28 dB PSNR)
  colour_per_image+detail  that map's low band plus the teacher's own high band (Gaussian sigma 1)
  teacher_blur_0.5/1.0     the teacher's output, Gaussian-blurred (sigma in pixels at 256 px)
  teacher_noise_0.02       the teacher's output plus Gaussian noise (sigma 0.02 of the [0, 1] range)

Paired: on the first 50 testA photos, each vs the teacher's output of the same photo. Distribution:
on the 400 held-out photos E vs the teacher on the 400 others R (see real_teacher.py). A row's PSNR
and SSIM are per image vs the teacher on the paired photos. Inception features are cached in
real_teacher's work folder, so a re-run only recomputes what changed.

    python benchmarks/fid_sensitivity.py          # data: ../shared/data/photo2anime (real_teacher's default)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import colour_ceiling as cc  # noqa: E402
import real_teacher as rt  # noqa: E402


def edits(seed: int = 0) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """name -> f(inputs, teacher outputs) in [-1, 1]."""
    def noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return (t + 2 * 0.02 * torch.randn(t.shape, generator=g)).clamp(-1, 1)

    def detail(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (rt.gaussian_blur(cc.per_photo(x, t), 1.0) + t - rt.gaussian_blur(t, 1.0)).clamp(-1, 1)

    return {"input": lambda x, t: x,
            "colour_per_image": cc.per_photo,
            "colour_per_image+detail": detail,
            "teacher_blur_0.5": lambda x, t: rt.gaussian_blur(t, 0.5),
            "teacher_blur_1.0": lambda x, t: rt.gaussian_blur(t, 1.0),
            "teacher_noise_0.02": noise}


def main(argv: list[str] | None = None) -> int:
    from crdtool.train.teacher_cache import TeacherCache

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=rt.Settings.data)
    p.add_argument("--out", type=Path, default=rt.RESULTS / "fid_sensitivity")
    p.add_argument("--no-dist", action="store_true", help="paired FID/KID only (the distribution form costs "
                   "Inception on 400 images per edit)")
    a = p.parse_args(argv)
    s = rt.Settings(data=a.data.resolve(), dist_fid_images=0 if a.no_dist else rt.Settings.dist_fid_images)
    torch.set_num_threads(s.threads)
    cache = TeacherCache(rt.load_teacher(s), s.cache_dir)
    splits = rt.build_splits(s, cache)
    scorer = rt.Scorer(s, splits, cache)
    test, n = splits["test"], s.fid_images
    evaluated = scorer.heldout()[0] if s.dist_fid_images else None
    rows = {}
    for name, edit in edits().items():
        paired = edit(test.inputs[:n], test.teacher[:n])
        row = {k: round(v, 4) for k, v in rt.fidelity_scores(paired, test.teacher[:n]).items()}
        # the input's features are the ones real_teacher.py caches for its reference row
        paired_name, dist_name = (("input-testA", "input-heldout-evaluated") if name == "input"
                                  else (f"edit-{name}", f"edit-{name}"))
        row.update(scorer.score(paired_name, paired))
        if evaluated is not None:
            row.update(scorer.score_dist(dist_name, edit(evaluated.inputs, evaluated.teacher)))
        rows[name] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}
        rt.log(f"{name}: {rows[name]}")
    refs = rt.references(s, splits, scorer)  # scores the teacher's floor when no earlier run cached it
    res = {"format": "crdtool.fid-sensitivity", "version": 1,
           "what": (f"known edits of the vintagify teacher's output scored against it: paired FID/KID on the first "
                    f"{n} testA photos" + (f", distribution FID/KID on {s.dist_fid_images} held-out photos vs the "
                                           f"teacher on {s.dist_fid_images} others" if s.dist_fid_images else "")
                    + "; PSNR/SSIM per image on the paired photos"),
           "teacher_floor": {k: v for k, v in refs["teacher_ref_split"].items() if "dist" in k},
           "rows": rows, **rt.provenance("fid_sensitivity.py", argv)}
    lines = ["# What FID to the vintagify teacher rewards: edits of the teacher's own output", "",
             f"| edit | PSNR (dB) | SSIM | FID paired (n={n}) | KID paired | "
             f"FID distribution (n={s.dist_fid_images}) | KID distribution |", "|---|---|---|---|---|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v['psnr_vs_teacher']:.2f} | {v['ssim_vs_teacher']:.4f} | {v['fid_to_teacher']:.2f} | "
                     f"{v['kid_to_teacher']:.4f} | {rt._f(v.get('fid_dist_to_teacher'))} | "
                     f"{rt._f(v.get('kid_dist_to_teacher'), 4)} |")
    floor = res["teacher_floor"]
    lines += ["", f"The teacher itself, distribution protocol (its outputs on E vs on R): FID "
              f"{floor.get('fid_dist_to_teacher', float('nan')):.2f}, KID {floor.get('kid_dist_to_teacher', float('nan')):.4f}."]
    rt.write_report(res, a.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
