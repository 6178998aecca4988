"""How much of the vintagify teacher's job is a colour transform, and how much of it is per photo?

Fits colour maps from the input photo to the teacher's output (least squares in float64, 3x3 matrix
plus offset) and scores them against the teacher on the held-out testA photos:

  input          the untranslated photo
  global         one map for all photos, fitted on the training photos
  global_oracle  one map for all photos, fitted on testA itself (the best any shared map can do)
  per_image      one map per testA photo, fitted on that photo (what a per-image colour grade reaches)

A student whose skip is a fixed colour map is capped near ``global``; ``per_image`` is what the
per-image colour skip (crdtool/models/colour_skip.py) can aim for. Uses the teacher outputs cached by
benchmarks/real_teacher.py (they are computed on a cache miss).

    python benchmarks/colour_ceiling.py          # data: ../shared/data/photo2anime (real_teacher's default)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_teacher as rt  # noqa: E402  (its splits, teacher and cache)


def _design(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N*H*W, 4) rows [r, g, b, 1] in float64."""
    pix = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double()
    return torch.cat([pix, torch.ones(len(pix), 1, dtype=torch.float64)], 1)


def fit_map(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The (4, 3) least-squares colour map from ``x`` to ``t`` (normal equations: float32 lstsq over
    millions of pixels loses digits)."""
    X, Y = _design(x), t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).double()
    return torch.linalg.solve(X.T @ X, X.T @ Y)


def apply_map(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return (_design(x) @ m).float().view(n, h, w, c).permute(0, 3, 1, 2).clamp(-1, 1)


def per_photo(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Each photo of ``x`` through its own least-squares colour map to its ``t``."""
    return torch.cat([apply_map(fit_map(a[None], b[None]), a[None]) for a, b in zip(x, t)])


def scores(x: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    f = rt.fidelity_scores(x, t)
    return {k: round(v, 4) for k, v in f.items()}


def main(argv: list[str] | None = None) -> int:
    from crdtool.fileio import write_json_atomic
    from crdtool.train.teacher_cache import TeacherCache

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=rt.Settings.data)
    p.add_argument("--out", type=Path, default=rt.RESULTS / "colour_ceiling")
    a = p.parse_args(argv)
    s = rt.Settings(data=a.data.resolve())
    torch.set_num_threads(1)
    splits = rt.build_splits(s, TeacherCache(rt.load_teacher(s), s.cache_dir))
    train, test = splits["train"], splits["test"]
    shared = fit_map(train.inputs, train.teacher)
    oracle = fit_map(test.inputs, test.teacher)
    per_image = per_photo(test.inputs, test.teacher)
    rows = {"input": scores(test.inputs, test.teacher),
            "global": scores(apply_map(shared, test.inputs), test.teacher),
            "global_oracle": scores(apply_map(oracle, test.inputs), test.teacher),
            "per_image": scores(per_image, test.teacher)}
    res = {"format": "crdtool.colour-ceiling", "version": 1,
           "what": (f"colour maps (3x3 + offset) from input to the vintagify teacher's output, scored vs the "
                    f"teacher on {len(test.files)} testA photos at {s.size} px; 'global' fitted on the first "
                    f"{len(train.files)} trainA photos"),
           "rows": rows, "global_map": [[round(v, 4) for v in r] for r in shared.tolist()],
           **rt.provenance("colour_ceiling.py", argv)}
    write_json_atomic(a.out.with_suffix(".json"), res)
    lines = ["# Colour maps from input to the vintagify teacher (testA, PSNR/SSIM vs the teacher)", "",
             "| map | PSNR (dB) | SSIM |", "|---|---|---|"]
    lines += [f"| {k} | {v['psnr_vs_teacher']:.2f} | {v['ssim_vs_teacher']:.4f} |" for k, v in rows.items()]
    lines += ["", res["what"] + f". Host: {res['host']['cpu']}; made by `{res['command']}`."]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
