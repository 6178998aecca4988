"""Which part of the vintagify teacher's texture does FID see? Swap frequency bands of a student's output
for the teacher's own, and score each hybrid with real_teacher.py's distribution FID/KID.

The students of benchmarks/real_teacher.py reach the teacher's colours and PSNR well above the input's,
yet their distribution FID stays near the input's. Each row here keeps the student's output and replaces
one part of its 2-D spectrum (per image and channel, 256 px) by the teacher's output's:

  nyquist_lines        the bins within 2 of the Nyquist frequency in either axis: a stride-2 grid texture
  band_025_0375        bins with max(|fy|, |fx|) in [0.25, 0.375) cycles/px
  band_0375_05         bins with max(|fy|, |fx|) in [0.375, 0.5]
  high_band            both bands (>= 0.25 cycles/px)
  high_band_amplitude  the teacher's amplitudes in that band with the student's phases: what a
                       phase-free loss (crdtool.losses.SpectralAmplitudeLoss) can ask of a student
  high_band_gain       the student's own high band, scaled per image and channel to the teacher's energy
                       there: is the student's texture just too faint?
  high_band_blocks4    the same per 4 x 4 block of bins: the energy in each neighbourhood of frequencies,
                       what SpectralAmplitudeLoss(pool=4) asks of a student
  high_band_train_gain the student's own high band times one gain per channel, fitted on the *training*
                       photos (the teacher's high-band energy over the student's there): no teacher
                       output of the scored photos is used, so a deployed student could do the same
  noise_0.02           Gaussian noise of std 0.02 instead: any high-band energy at all
  low_band             the other way round: the teacher's bins below 0.25 cycles/px (colours, light,
                       shapes) under the student's own texture
  low_band_0125        the teacher's bins below 0.125 cycles/px only: its colour grading and coarse light
  band_0125_025        the teacher's bins in [0.125, 0.25) cycles/px only: structure of 4-8 px periods
  colour_matrix        the student's output through one 3 x 4 colour matrix per image, fitted by least
                       squares to the teacher's output of that photo: a perfect per-photo colour grade
  colour_grid4/8       one such matrix per cell of a 4 x 4 (8 x 8) grid over the image, blended
                       bilinearly between cell centres: a perfect coarse, spatially varying grade
  colour_poly2/3       one least-squares map per image from the monomials of the student's colours up
                       to degree 2 (3): a perfect per-photo tone curve with channel mixing, which no
                       3 x 4 matrix can bend

    python benchmarks/texture_oracle.py \
        --student benchmarks/results/real_teacher_skip_filter/real_teacher/pixel_detail-seed0.safetensors
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_teacher as rt  # noqa: E402


def band_masks(n: int) -> dict[str, torch.Tensor]:
    """(n, n) bool masks over ``fft2`` bins, by max(|fy|, |fx|) in cycles per pixel."""
    f = torch.fft.fftfreq(n).abs()
    fy, fx = f[:, None].expand(n, n), f[None, :].expand(n, n)
    r = torch.maximum(fy, fx)
    nyquist = ((fy - 0.5).abs() <= 2 / n) | ((fx - 0.5).abs() <= 2 / n)
    return {"nyquist_lines": nyquist, "band_025_0375": (r >= 0.25) & (r < 0.375), "band_0375_05": r >= 0.375,
            "high_band": r >= 0.25, "low_band": r < 0.25, "low_band_0125": r < 0.125,
            "band_0125_025": (r >= 0.125) & (r < 0.25)}


def colour_monomials(x: torch.Tensor, degree: int) -> torch.Tensor:
    """(N, K, H, W) float64: the channels, their products up to ``degree``, then a constant 1."""
    from itertools import combinations_with_replacement

    x = x.double()
    terms = [x[:, list(idx)].prod(1, keepdim=True) for d in range(2, degree + 1)
             for idx in combinations_with_replacement(range(x.shape[1]), d)]
    return torch.cat([x, *terms, torch.ones_like(x[:, :1])], 1)


def colour_grid_matched(x: torch.Tensor, target: torch.Tensor, cells: int, degree: int = 1) -> torch.Tensor:
    """``x`` through one least-squares colour map per cell of a ``cells`` x ``cells`` grid, the maps'
    coefficients interpolated bilinearly between cell centres (as a bilateral-grid retoucher would), so no
    cell edge shows; ``cells = 1`` is one map per image. ``degree`` 1: a 3 x 4 matrix; higher: a map from
    the colours' monomials (``colour_monomials``)."""
    n, c, h, w = x.shape
    if n > 8:  # a few photos at a time: the monomials of the whole held-out set are gigabytes
        return torch.cat([colour_grid_matched(x[i:i + 8], target[i:i + 8], cells, degree) for i in range(0, n, 8)])
    X = colour_monomials(x, degree)  # (n, k, h, w)
    tile = lambda t: (t.reshape(n, t.shape[1], cells, h // cells, cells, w // cells)  # noqa: E731
                      .permute(0, 2, 4, 3, 5, 1).reshape(n, cells, cells, -1, t.shape[1]))
    M = torch.linalg.lstsq(tile(X), tile(target.double())).solution  # (n, cells, cells, c + 1, c)
    M = M.reshape(n, cells, cells, -1).permute(0, 3, 1, 2)  # (n, k * c, cells, cells)
    M = torch.nn.functional.interpolate(M, size=(h, w), mode="bilinear", align_corners=False)
    M = M.reshape(n, X.shape[1], c, h, w)
    return (X[:, :, None] * M).sum(1).clamp(-1, 1).float()


def high_band_energy(x: torch.Tensor) -> torch.Tensor:
    """(N, C) energy of each image in the band >= 0.25 cycles/px."""
    from crdtool.losses.spectral import high_band_mask, power_spectrum

    return power_spectrum(x.double())[..., high_band_mask(*x.shape[-2:], 0.25)].sum(-1)


def with_high_band_gain(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``x`` with its band >= 0.25 cycles/px multiplied by ``gain`` (broadcast over (N, C, H, W // 2 + 1)
    rfft2 bins; on the half-plane, so the result stays a real image)."""
    from crdtool.losses.spectral import high_band_mask

    X = torch.fft.rfft2(x.double())
    g = torch.where(high_band_mask(*x.shape[-2:], 0.25), gain.double(), torch.ones(()).double())
    return torch.fft.irfft2(X * g, s=x.shape[-2:]).clamp(-1, 1).float()


def hybrid_makers(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Each row's maker: the student's outputs with a part taken from the teacher's, in [-1, 1]. Rows are
    made one at a time, only those scored: each is as large as the held-out set, and so are the spectra."""
    from functools import cache

    from crdtool.losses.spectral import high_band_mask

    S = cache(lambda: torch.fft.fft2(student.double()))
    T = cache(lambda: torch.fft.fft2(teacher.double()))
    back = lambda F: torch.fft.ifft2(F).real.clamp(-1, 1).float()  # noqa: E731
    masks = band_masks(student.shape[-1])

    def amplitude() -> torch.Tensor:
        return back(torch.where(masks["high_band"], S() / S().abs().clamp_min(1e-12) * T().abs(), S()))

    def gain_per_image() -> torch.Tensor:
        per_image = (high_band_energy(teacher) / high_band_energy(student).clamp_min(1e-12)).sqrt()
        return with_high_band_gain(student, per_image[..., None, None])

    def blocks4() -> torch.Tensor:
        high = high_band_mask(*student.shape[-2:], 0.25)
        Sr, Tr = torch.fft.rfft2(student.double()), torch.fft.rfft2(teacher.double())
        return with_high_band_gain(student, block_gain(Sr, Tr, high, 4))

    def noise() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return (student + 0.02 * torch.randn(student.shape, generator=g)).clamp(-1, 1)

    out: dict[str, Callable[[], torch.Tensor]] = {"student": lambda: student}
    for name, m in masks.items():
        out[name] = lambda m=m: back(torch.where(m, T(), S()))
    out["high_band_amplitude"] = amplitude
    out["high_band_gain"] = gain_per_image
    out["high_band_blocks4"] = blocks4
    out["colour_matrix"] = lambda: colour_grid_matched(student, teacher, 1)
    for cells in (4, 8):
        out[f"colour_grid{cells}"] = lambda cells=cells: colour_grid_matched(student, teacher, cells)
    for degree in (2, 3):
        out[f"colour_poly{degree}"] = lambda degree=degree: colour_grid_matched(student, teacher, 1, degree)
    out["noise_0.02"] = noise
    return out


def block_gain(S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Per-bin gain that gives each k x k block of ``S``'s in-band bins the RMS amplitude of ``T``'s."""
    m = mask.to(S.real.dtype)[None, None]
    pool = lambda P: torch.nn.functional.avg_pool2d(P * m, k, stride=k, ceil_mode=True)  # noqa: E731
    gain = (pool(T.abs().square()) / pool(S.abs().square()).clamp_min(1e-12)).sqrt()
    gain = torch.repeat_interleave(torch.repeat_interleave(gain, k, dim=-2), k, dim=-1)
    return gain[..., :S.shape[-2], :S.shape[-1]]


def main(argv: list[str] | None = None) -> int:
    from crdtool.models.checkpoints import load_generator
    from crdtool.train.teacher_cache import TeacherCache, weights_digest

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=rt.Settings.data)
    p.add_argument("--student", type=Path, required=True, help="a real_teacher.py student file")
    p.add_argument("--work-dir", type=Path, default=rt.ROOT / "runs" / "real_teacher" / "texture_oracle",
                   help="Inception features (the reference set's are reused from real_teacher.py's work dir)")
    p.add_argument("--out", type=Path, default=rt.RESULTS / "texture_oracle")
    p.add_argument("--rows", nargs="+", help="score only these rows (default: all)")
    a = p.parse_args(argv)
    s = rt.Settings(data=a.data.resolve(), work_dir=a.work_dir.resolve(), threads=2)
    torch.set_num_threads(s.threads)
    cache = TeacherCache(rt.load_teacher(s), s.cache_dir)
    scorer = rt.Scorer(s, rt.build_splits(s, cache), cache)
    evaluated, _ = scorer.heldout()
    student = load_generator(a.student)
    tag = f"{a.student.stem}-{weights_digest(student)[:12]}"
    rows = {}
    outputs = rt.translate(student, evaluated.inputs)
    table = hybrid_makers(outputs, evaluated.teacher)
    train = scorer.splits["train"]

    def train_gain() -> torch.Tensor:
        gain = (high_band_energy(train.teacher).sum(0)
                / high_band_energy(rt.translate(student, train.inputs)).sum(0)).sqrt()
        rt.log(f"high-band gain fitted on {len(train.files)} training photos: {[round(float(g), 3) for g in gain]}")
        return with_high_band_gain(outputs, gain[:, None, None])

    table["high_band_train_gain"] = train_gain
    for name, make in table.items():
        if a.rows and name not in a.rows:
            continue
        rows[name] = {k: round(v, 5) for k, v in scorer.score_dist(f"oracle-{tag}-{name}", make()).items()}
        rt.log(f"{name}: {rows[name]}")
    res = {"format": "crdtool.texture-oracle", "version": 1, "student": rt.rel(a.student), "rows": rows,
           "what": (f"the student's outputs on {s.dist_fid_images} held-out photos with parts of their 2-D spectra "
                    "(per image and channel) replaced by the vintagify teacher's, scored against the teacher's "
                    f"outputs on {s.dist_fid_images} other photos (real_teacher.py's distribution FID/KID)"),
           **rt.provenance("texture_oracle.py", argv)}
    lines = [f"# What FID sees of the teacher's output: {rt.rel(a.student)}", "",
             "| output | FID distribution | KID distribution |", "|---|---|---|"]
    lines += [f"| {k} | {v['fid_dist_to_teacher']:.2f} | {v['kid_dist_to_teacher']:.4f} |" for k, v in rows.items()]
    rt.write_report(res, a.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
