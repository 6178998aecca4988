"""Are the students as soft as the teacher? Fine detail of the vintagify teacher, the photos and the
students of benchmarks/real_teacher.py, and what a little blur of a student's output does to its scores.

The teacher softens: its outputs hold less fine detail than the photos it is given. A student whose
output is the photo (through its skip) plus a correction keeps more of the photo's detail than the
teacher does, unless its residual learns to cancel it. This measures how much, on testA:

  detail_0.5, detail_1   mean |x - blur_sigma(x)| in the [0, 1] range (Gaussian, sigma 0.5 and 1 px at 256 px)
  detail_corr            cosine similarity of a row's sigma-1 detail with the teacher's, per photo, averaged
  psnr / ssim            vs the teacher's output (as real_teacher.py)

Rows: the untranslated input, the teacher, each arm's seed-0 student (``--arms``) and ``--extra``
students (e.g. those with ``student.skip_filter``), and ``--student``'s
output (default: the seed-0 L1 student) blurred by 0.5 and 0.7 px. That student and its blurred
outputs also get the distribution FID/KID of real_teacher.py (400 held-out photos vs the teacher on
400 others), so the effect of the softening on FID is measured in the same run.

    python benchmarks/student_sharpness.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_teacher as rt  # noqa: E402

BLURS = (0.5, 0.7)


def detail(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The band above a Gaussian of ``sigma`` px, in the [0, 1] range (images are in [-1, 1])."""
    return (x - rt.gaussian_blur(x, sigma)) / 2


def detail_row(x: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    d1, t1 = detail(x, 1.0).flatten(1), detail(teacher, 1.0).flatten(1)
    return {"detail_0.5": detail(x, 0.5).abs().mean().item(), "detail_1": d1.abs().mean().item(),
            "detail_corr": torch.nn.functional.cosine_similarity(d1, t1).mean().item()}


def main(argv: list[str] | None = None) -> int:
    from crdtool.models.checkpoints import load_generator
    from crdtool.train.teacher_cache import TeacherCache

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=rt.Settings.data)
    p.add_argument("--arms", nargs="+", default=list(rt.DEFAULT_ARMS), choices=list(rt.ARMS))
    p.add_argument("--student", type=Path, default=rt.RESULTS / "real_teacher" / "pixel-seed0.safetensors",
                   help="the student whose output is blurred and scored with the distribution FID")
    p.add_argument("--extra", type=Path, nargs="*", default=[],
                   help="more student files to list (e.g. another results folder's <arm>-seed0.safetensors)")
    p.add_argument("--out", type=Path, default=rt.RESULTS / "student_sharpness")
    a = p.parse_args(argv)
    s = rt.Settings(data=a.data.resolve())
    torch.set_num_threads(s.threads)
    cache = TeacherCache(rt.load_teacher(s), s.cache_dir)
    splits = rt.build_splits(s, cache)
    scorer = rt.Scorer(s, splits, cache)
    test = splits["test"]
    evaluated, _ = scorer.heldout()

    def scored(x: torch.Tensor) -> dict[str, float]:
        return {**detail_row(x, test.teacher), **rt.fidelity_scores(x, test.teacher)}

    rows = {"input": scored(test.inputs), "teacher": scored(test.teacher)}
    for arm in a.arms:
        f = rt.RESULTS / "real_teacher" / f"{arm}-seed0.safetensors"
        if f.is_file():
            rows[f"{arm} (seed 0)"] = scored(rt.translate(load_generator(f), test.inputs))
    for f in a.extra:  # named by its results folder: real_teacher_<variant>/real_teacher/<arm>-seed0.safetensors
        rows[f"{f.parent.parent.name}: {f.stem}"] = scored(rt.translate(load_generator(f), test.inputs))
    student = load_generator(a.student)
    name = a.student.stem
    on_test, on_e = rt.translate(student, test.inputs), rt.translate(student, evaluated.inputs)
    for sigma in (0.0, *BLURS):
        blur = (lambda x: x) if sigma == 0 else (lambda x, sg=sigma: rt.gaussian_blur(x, sg))
        label = name if sigma == 0 else f"{name} blurred {sigma} px"
        row = scored(blur(on_test))
        row.update(scorer.score_dist(f"sharpness-{name}-blur{sigma}", blur(on_e)))
        rows[label] = row
        rt.log(f"{label}: {row}")
    rows = {k: {m: round(v, 5) for m, v in r.items()} for k, r in rows.items()}
    res = {"format": "crdtool.student-sharpness", "version": 1, "rows": rows,
           "what": ("testA at 256 px: fine detail mean |x - blur_sigma(x)| in [0, 1], its cosine similarity with "
                    "the teacher's (sigma 1), PSNR/SSIM vs the teacher; distribution FID/KID as real_teacher.py "
                    f"({s.dist_fid_images} held-out photos vs the teacher on {s.dist_fid_images} others)"),
           **rt.provenance("student_sharpness.py", argv)}
    lines = ["# Fine detail of the teacher, the photos and the students (testA)", "",
             "| row | detail σ 0.5 | detail σ 1 | detail corr. with teacher | PSNR vs teacher (dB) | SSIM | "
             "FID distribution | KID distribution |", "|---|---|---|---|---|---|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v['detail_0.5']:.4f} | {v['detail_1']:.4f} | {v['detail_corr']:.3f} | "
                     f"{v['psnr_vs_teacher']:.2f} | {v['ssim_vs_teacher']:.4f} | "
                     f"{rt._f(v.get('fid_dist_to_teacher'))} | {rt._f(v.get('kid_dist_to_teacher'), 4)} |")
    rt.write_report(res, a.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
