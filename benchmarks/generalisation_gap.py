"""How well do real_teacher.py's students generalise from their 100 training photos?

PSNR against the vintagify teacher's output on the photos a student trained on and on the held-out
testA photos, each next to the untranslated input's PSNR on the same photos (the two sets differ in
how far the teacher moves them, so the gain over the input is what compares). A student that gains
much more on its training photos than on testA has learned those photos rather than the teacher.

    python benchmarks/generalisation_gap.py --students \\
        benchmarks/results/real_teacher_hfgan_gan1/real_teacher/runs/pixel_spectral_hfgan-seed0/student.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_teacher as rt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from crdtool.metrics.fidelity import psnr
    from crdtool.models.checkpoints import load_generator
    from crdtool.train.teacher_cache import TeacherCache

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=rt.Settings.data)
    p.add_argument("--students", type=Path, nargs="+", required=True, help="real_teacher.py student files")
    p.add_argument("--work-dir", type=Path, default=rt.ROOT / "runs" / "real_teacher" / "aligned",
                   help="real_teacher.py's work dir (its teacher cache)")
    p.add_argument("--out", type=Path, default=rt.RESULTS / "generalisation_gap")
    a = p.parse_args(argv)
    s = rt.Settings(data=a.data.resolve(), work_dir=a.work_dir.resolve(), threads=2)
    torch.set_num_threads(s.threads)
    cache = TeacherCache(rt.load_teacher(s), s.cache_dir)
    splits = rt.build_splits(s, cache)
    inputs = {name: psnr(splits[name].inputs, splits[name].teacher) for name in ("train", "test")}
    rows = {}
    for path in a.students:
        student = load_generator(path)
        row = {name: psnr(rt.translate(student, splits[name].inputs), splits[name].teacher) for name in inputs}
        rows[rt.rel(path)] = {k: round(v, 3) for k, v in row.items()}
        rt.log(f"{rt.rel(path)}: {rows[rt.rel(path)]}")
    res = {"format": "crdtool.generalisation-gap", "version": 1, "input": {k: round(v, 3) for k, v in inputs.items()},
           "students": rows,
           "what": (f"mean per-image PSNR (dB) vs the teacher's output on the {len(splits['train'].files)} training "
                    f"photos and the {len(splits['test'].files)} testA photos, at {s.size} px; gain = student - "
                    "input on the same photos"),
           **rt.provenance("generalisation_gap.py", argv)}
    lines = ["# Generalisation from the training photos (PSNR vs the vintagify teacher)", "",
             "| student | train PSNR | train gain | testA PSNR | testA gain | train gain - testA gain |",
             "|---|---|---|---|---|---|",
             f"| untranslated input | {inputs['train']:.2f} | - | {inputs['test']:.2f} | - | - |"]
    for name, r in rows.items():
        gain = {k: r[k] - inputs[k] for k in inputs}
        lines.append(f"| `{name}` | {r['train']:.2f} | {gain['train']:+.2f} | {r['test']:.2f} | {gain['test']:+.2f} "
                     f"| {gain['train'] - gain['test']:+.2f} |")
    rt.write_report(res, a.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
