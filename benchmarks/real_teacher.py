"""A real trained teacher, distilled on real photos: does the student do the teacher's job on held-out images?

Teacher: the ``vintagify`` CycleGAN (modern photo -> vintage photo; resnet_9blocks ngf64 with affine
InstanceNorm, 56.80 GMACs at 256 px). Student: mobile_resnet ngf16 (1.408 GMACs) with a global
input skip (``residual = true``: out = clamp(x + head(features), -1, 1)), so that a student of this
subtle photo->photo translation starts near the identity, and a per-image colour matrix on that skip
(``colour_skip = true``, ~0.8M MACs more): the teacher grades every photo differently, which the
InstanceNorm features cannot express (see crdtool/models/colour_skip.py). The common architecture of
every arm; ``--no-colour-skip`` trains the plain input skip.

The teacher is paid for once: every image it will ever see (a training subset of trainA and the
held-out testA) is translated whole at 256 px and kept in a ``TeacherCache``; the students then
train on random crops of (input, cached teacher output) pairs.

Arms, at equal budget (same student, images, steps, seeds; only the loss differs):

  pixel        L1 to the teacher output
  vgg          VGG-19 perceptual loss only
  crd          CRD only (rows, columns, patches; RKD distance + angle)
  crd_vgg      CRD + VGG
  crd_vgg_gan  CRD + VGG + GAN; D learns teacher output (real) vs student output (fake)
  rkd_vgg      instance-level RKD (relations between whole images of a batch) + VGG
  pixel_plain  (reference row) L1, the plain tanh student without the input skip
  pixel_gan, pixel_crd_vgg_gan   (extra rows) the GAN and the full loss with L1 as the colour anchor
  pixel_detail (extra row) L1 plus L1 of the fine detail: the band above a 1 px Gaussian blur
  pixel_spectral, crd_vgg_spectral  (extra rows) L1 or CRD + VGG, plus the high-band amplitude loss
               (crdtool.losses.SpectralAmplitudeLoss): the teacher's fine texture energy, phase-free
  pixel_spectral_hfgan  (extra row) pixel_spectral plus a GAN whose D sees only the fine detail (each
               image minus its 1 px Gaussian blur): teacher detail real, student detail fake
  lowpass_spectral  (extra row) L1 of the outputs blurred by a 1 px Gaussian, plus the amplitude loss:
               the fine texture is asked for only by its energy, never by a pixel-exact match

``--lambda-distill W`` adds crdtool's feature distillation (``loss.lambda_distill``) to an arm: the MSE
between the teacher's features after its residual blocks 0 (the encoder's end), 3, 6 and 9 and the
student's, each mapped to the teacher's width by a learned 1x1 conv. The teacher's features of every
training photo are computed once, so it needs whole, unmirrored photos (``--crop 256 --no-flip``).

Metrics on testA (never trained on), against the teacher's outputs: PSNR and SSIM, and two kinds
of FID/KID (TF-Inception pool3):

  paired        each output on the first 50 testA photos vs the teacher's output of the same photo.
                With 50 images this is a texture-alignment score more than a distribution distance:
                the teacher's own outputs on 50 other photos score far worse than the untranslated
                inputs, so it has no floor but 0.
  distribution  outputs on 400 held-out photos (testA, then trainA photos the students never saw)
                vs the teacher's outputs on 400 other held-out photos: the GAN convention. Every
                row faces the same reference set, and the floor row is the teacher's own outputs
                on the evaluated photos.

Reference rows: the untranslated inputs and the teacher itself. Deployment: every seed-0 student
and the teacher exported to ONNX fp32 and int8 (onnxruntime, CPU), timed, and the int8 student's
fidelity to the teacher on testA.

    python benchmarks/real_teacher.py                                  # data: ../shared/data/photo2anime
    python benchmarks/real_teacher.py --data DIR --teacher weights:vintagify --vgg weights:vgg19 --seeds 0 1 2

Resumable: a finished (arm, seed) run (its metrics.json) is skipped; the aggregate files are rewritten
from whatever runs exist. Writes benchmarks/results/real_teacher.{json,md,png},
benchmarks/results/real_teacher/runs/<arm>-seed<k>/ and <arm>-seed0.safetensors copies.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crdtool.losses import fine_detail, gaussian_blur  # gaussian_blur: also rt.gaussian_blur in other benchmarks
from crdtool.train.weight_average import WeightAverage

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULT_FORMAT = "crdtool.real-teacher"
VIEW = "resize256"  # the cache entry: whole image, square bicubic resize to 256
# More training pairs from the same photos: each view transforms the *input*, and the teacher translates
# the result. Mirroring a cached output instead would move the teacher's stride-2 grid texture by a pixel
# against the student's grid; a mirrored input gives the teacher's texture on its own grid.
TRAIN_VIEWS = {"mirror": lambda x: x.flip(-1), "vflip": lambda x: x.flip(-2), "rot180": lambda x: x.flip(-2, -1)}

ARMS: dict[str, str] = {
    "pixel": "L1 to the teacher output",
    "vgg": "VGG-19 perceptual loss",
    "crd": "CRD",
    "crd_vgg": "CRD + VGG-19",
    "crd_vgg_gan": "CRD + VGG-19 + GAN (D: teacher output vs student output)",
    "rkd_vgg": "instance-level RKD + VGG-19",
    "pixel_plain": "L1 to the teacher output, plain tanh student (no input skip)",
    "pixel_gan": "L1 + GAN (D: teacher output vs student output)",
    "pixel_crd_vgg_gan": "L1 + CRD + VGG-19 + GAN",
    "pixel_detail": "L1 + L1 of the fine detail (the band above a 1 px Gaussian)",
    "pixel_spectral": "L1 + high-band amplitude spectrum (above 0.25 cycles/px)",
    "crd_vgg_spectral": "CRD + VGG-19 + high-band amplitude spectrum",
    "lowpass_spectral": "L1 of the 1 px-blurred outputs + high-band amplitude spectrum",
    "pixel_spectral_hfgan": "L1 + high-band amplitude spectrum + GAN on the fine detail",
}
DEFAULT_ARMS = ["pixel", "vgg", "crd", "crd_vgg", "crd_vgg_gan", "rkd_vgg"]


@dataclass
class Settings:
    data: Path = ROOT.parent / "shared" / "data" / "photo2anime"
    teacher: str = "weights:vintagify"
    vgg: str = "weights:vgg19"
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_images: int = 100  # first N of trainA; also the teacher's reference split (disjoint from testA)
    size: int = 256
    crop: int = 128  # crops large enough that their colour statistics resemble the whole photo's
    crop_align: int = 1  # crop offsets in multiples of this (the generator's stride keeps the teacher's pixel grid)
    flip: bool = True  # random horizontal flips (a flip mirrors the teacher's pixel grid)
    batch: int = 4
    steps: int = 600
    lr: float = 2e-3
    colour_skip: bool = True  # the student's skip goes through a per-image colour matrix (models/colour_skip.py)
    skip_filter: bool = False  # and, before it, a learned 3x3 filter per channel (the teacher softens the photo)
    betas: tuple[float, float] = (0.5, 0.999)
    decay_from: float = 0.5  # lr decays linearly to 0 over the last half of the steps
    fid_images: int = 50  # paired FID/KID: the first N testA photos, each output vs the teacher's output of it
    dist_fid_images: int = 400  # distribution FID/KID: outputs on N held-out photos vs the teacher on N others
    lambda_pixel: float = 10.0
    lambda_coarse: float = 0.0  # an extra L1 below the texture band (both outputs blurred by 1 px): local
    # tone weighted above the grain (tried at 20: more PSNR, worse FID; results/real_teacher_hfgan_gan1_coarse)
    lambda_crd: float = 25.0
    lambda_gan: float = 1.0
    lambda_detail: float = 10.0
    lambda_gan_detail: float = 0.5  # the fine-detail GAN (pixel_spectral_hfgan) ...
    detail_d_ndf: int = 32  # ... its D: a quarter of the PatchGAN's MACs ...
    detail_d_lr_scale: float = 0.1  # ... at a tenth of the student's rate ...
    detail_sigma: float = 1.0  # ... judging each image minus its blur of this many px (2: an octave lower)
    lambda_distill: float = 0.0  # MSE of the teacher's inner features, the student's mapped by a 1x1 conv
    distill_blocks: tuple[int, ...] = (0, 3, 6, 9)  # after these residual blocks (0: the encoder's end)
    lambda_spectral: float = 20.0
    spectral_min_freq: float = 0.25  # cycles per pixel: the band whose amplitudes the spectral term matches
    spectral_pool: int = 1  # compare the RMS amplitude of pool x pool blocks of bins (1: each bin)
    train_views: list[str] = field(default_factory=list)  # extra teacher-translated views (TRAIN_VIEWS)
    extra_train: list[Path] = field(default_factory=list)  # more training photos (folders outside --data)
    extra_train_images: int = 0  # at most this many from each (0: all)
    crd_patch: int = 32
    threads: int = 1  # on a shared 2-core host one thread per process beat two (less oversubscription)
    results_dir: Path = RESULTS
    work_dir: Path = ROOT / "runs" / "real_teacher" / "colour_skip"  # references, exports (not committed)
    cache_dir: Path = ROOT / "runs" / "real_teacher" / "teacher_cache"
    latency: bool = True
    log_every: int = 50
    ema: list[float] = field(default_factory=list)  # EMA decays of the student's weights over the decay phase;
    # the first is the run's student, the raw weights and the others are kept and scored as variants


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rel(p: Path) -> str:
    """Paths in results are relative to the repository (never this machine's absolute paths)."""
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return Path(p).name


def resolve_weights(ref: str) -> Path:
    """A ``weights:<id>`` reference (crdtool's weights registry) or a plain path."""
    if ref.startswith("weights:"):
        from crdtool.weights import KNOWN, cached_path

        wid = ref.removeprefix("weights:")
        if wid not in KNOWN:
            raise SystemExit(f"unknown weights id {wid!r}; known: {', '.join(KNOWN)}")
        path = cached_path(wid)
        if path is None:
            raise SystemExit(f"{ref} is not fetched yet: run `crdtool weights get {wid}`")
        return path
    return Path(ref)


# ----------------------------------------------------------------------------- data and teacher


@dataclass
class Split:
    files: list[Path]
    inputs: torch.Tensor  # (N, 3, 256, 256) in [-1, 1]
    teacher: torch.Tensor  # cached teacher outputs, same shape


def load_teacher(s: Settings):
    from crdtool.models.checkpoints import load_generator

    return load_generator(resolve_weights(s.teacher)).eval().requires_grad_(False)


def split_files(s: Settings) -> dict[str, list[Path]]:
    from crdtool.data.images import list_images

    train = list_images(s.data / "trainA")
    if s.train_images > len(train):
        raise SystemExit(f"trainA has {len(train)} images, fewer than --train-images {s.train_images}")
    extra = [f for folder in s.extra_train for f in list_images(folder)[:s.extra_train_images or None]]
    return {"test": list_images(s.data / "testA"), "train": train[:s.train_images] + extra}


def heldout_sets(s: Settings, cache) -> tuple[Split, Split]:
    """The distribution-FID sets: E (evaluated) = testA + the first trainA photos after the training ones,
    and R (reference, teacher outputs only) = the next ``dist_fid_images`` trainA photos; none trained on."""
    from crdtool.data.images import list_images

    n = s.dist_fid_images
    test = list_images(s.data / "testA")
    spare = list_images(s.data / "trainA")[s.train_images:]
    evaluated = (test + spare)[:n]
    reference = spare[max(0, n - len(test)):][:n]
    if len(evaluated) < n or len(reference) < n:
        raise SystemExit(f"--dist-fid-images {n} needs {2 * n} held-out photos; testA and the unused trainA "
                         f"photos hold {len(test) + len(spare)}")
    sets = build_splits(s, cache, {"heldout-evaluated": evaluated, "heldout-reference": reference})
    return sets["heldout-evaluated"], sets["heldout-reference"]


def build_splits(s: Settings, cache, sets: dict[str, list[Path]] | None = None) -> dict[str, Split]:
    """Inputs and teacher outputs of every split, the teacher running only on cache misses."""
    from crdtool.data.images import load_image
    from crdtool.data.transforms import eval_transform

    out = {}
    for name, files in (sets or split_files(s)).items():
        xs, ts, names = [], [], []
        t0, misses0 = time.perf_counter(), cache.misses
        views = [(VIEW, lambda x: x)] + [(f"{VIEW}-{v}", TRAIN_VIEWS[v]) for v in s.train_views if name == "train"]
        for view, transform in views:
            for i in range(0, len(files), 4):
                chunk = files[i:i + 4]
                x = transform(torch.stack([eval_transform(load_image(f), s.size) for f in chunk]))
                ts.append(cache.outputs(chunk, x, view))
                xs.append(x)
                if cache.misses > misses0 and (i // 4) % 25 == 24:
                    log(f"split {name} {view}: {i + len(chunk)}/{len(files)} images "
                        f"({time.perf_counter() - t0:.0f} s)")
            names += files
        log(f"split {name}: {len(names)} images, {cache.misses - misses0} translated by the teacher "
            f"({time.perf_counter() - t0:.0f} s)")
        out[name] = Split(names, torch.cat(xs), torch.cat(ts))
    return out


# ----------------------------------------------------------------------------- students and losses


def student_spec(arm: str, s: Settings):
    from crdtool.models import GeneratorSpec

    residual = arm != "pixel_plain"
    colour = residual and s.colour_skip
    return GeneratorSpec("mobile_resnet", ngf=16, residual=residual, colour_skip=colour,
                         skip_filter=colour and s.skip_filter).resolved()


def student_gmacs(s: Settings) -> float:
    from crdtool.profile import profile_spec

    return round(profile_spec(student_spec("pixel", s), s.size).macs["literature"] / 1e9, 4)


def arm_terms(arm: str) -> set[str]:
    return {"pixel": {"pixel"}, "pixel_plain": {"pixel"}, "vgg": {"vgg"}, "crd": {"crd"},
            "crd_vgg": {"crd", "vgg"}, "crd_vgg_gan": {"crd", "vgg", "gan"}, "rkd_vgg": {"rkd", "vgg"},
            "pixel_gan": {"pixel", "gan"}, "pixel_crd_vgg_gan": {"pixel", "crd", "vgg", "gan"},
            "pixel_detail": {"pixel", "detail"}, "pixel_spectral": {"pixel", "spectral"},
            "crd_vgg_spectral": {"crd", "vgg", "spectral"}, "lowpass_spectral": {"lowpass", "spectral"},
            "pixel_spectral_hfgan": {"pixel", "spectral", "hfgan"}}[arm]


class Losses:
    """crdtool's loss modules for one arm; ``student_loss(s, t) -> (total, {name: value})``."""

    def __init__(self, s: Settings, arm: str, perceptual=None):
        from crdtool.losses import CRDLoss, GANLoss, InstanceRKDLoss, SpectralAmplitudeLoss
        from crdtool.models import build_discriminator

        self.s, self.terms = s, arm_terms(arm)
        self.crd = CRDLoss(patch_size=s.crd_patch) if "crd" in self.terms else None
        self.rkd = InstanceRKDLoss() if "rkd" in self.terms else None
        self.spectral = (SpectralAmplitudeLoss(s.spectral_min_freq, s.spectral_pool)
                         if "spectral" in self.terms else None)
        self.perceptual = perceptual if "vgg" in self.terms else None
        self.gan = GANLoss("lsgan") if self.terms & {"gan", "hfgan"} else None
        self.detail_only = "hfgan" in self.terms
        ndf = s.detail_d_ndf if self.detail_only else 64
        self.D = build_discriminator(3, ndf, 3, "instance") if self.gan else None
        d_lr = s.lr * s.detail_d_lr_scale if self.detail_only else s.lr
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=s.betas) if self.D else None
        self.lambda_gan = s.lambda_gan_detail if self.detail_only else s.lambda_gan

    def judged(self, x: torch.Tensor) -> torch.Tensor:
        return fine_detail(x, self.s.detail_sigma) if self.detail_only else x

    def student_loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        s, parts = self.s, {}
        blurred_l1 = lambda: F.l1_loss(gaussian_blur(out, 1.0), gaussian_blur(target, 1.0))  # noqa: E731
        if "pixel" in self.terms:
            parts["pixel"] = s.lambda_pixel * F.l1_loss(out, target)
        if s.lambda_coarse:
            parts["coarse"] = s.lambda_coarse * blurred_l1()
        if "lowpass" in self.terms:  # L1 below the texture band: a wrong-phase grain costs nothing here
            parts["pixel"] = s.lambda_pixel * blurred_l1()
        if "detail" in self.terms:  # L1 of the band above a 1 px Gaussian: the teacher's fine texture
            parts["detail"] = s.lambda_detail * F.l1_loss(fine_detail(out), fine_detail(target))
        if self.spectral is not None:
            parts["spectral"] = s.lambda_spectral * self.spectral(out, target)
        if self.crd is not None:
            parts["crd"] = s.lambda_crd * self.crd(out, target)
        if self.rkd is not None:
            parts["rkd"] = s.lambda_crd * self.rkd(out, target)
        if self.perceptual is not None:
            parts.update(self.perceptual(out, target))
        if self.D is not None:
            self.D.requires_grad_(False)
            parts["gan"] = self.lambda_gan * self.gan.generator(self.D(self.judged(out)))
            self.D.requires_grad_(True)
        total = sum(parts.values())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def discriminator_step(self, out: torch.Tensor, target: torch.Tensor) -> float | None:
        """Teacher-only D: teacher output is real, the student's (detached) output is fake."""
        if self.D is None:
            return None
        loss = self.gan.discriminator(self.D(self.judged(target)), self.D(self.judged(out.detach())))
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_D.step()
        return float(loss.detach())


VGG_TAPS = ("relu1_2", "relu2_2", "relu3_4")  # up to block 3: conv4 would double the VGG cost per step


def build_perceptual(s: Settings):
    """crdtool's VGG-19 perceptual loss, taps up to relu3_4, as ``(student, teacher) -> {term: weighted loss}``."""
    from crdtool.losses.perceptual import PerceptualLoss, VGGConfig, VGGFeatures, load_vgg

    full = load_vgg(resolve_weights(s.vgg))
    c = full.config
    taps = {k: v for k, v in c.taps.items() if k in VGG_TAPS}
    config = VGGConfig(f"{c.name}-to-relu3", c.cfg, taps, tuple(k for k in c.style_layers if k in taps),
                       c.feature_layer)
    vgg = VGGFeatures(config, full.preprocessing, full.feature_scale, full.source)
    wanted = vgg.state_dict()
    vgg.load_state_dict({k: v for k, v in full.state_dict().items() if k in wanted})
    loss = PerceptualLoss(vgg)

    def terms(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        style, feature = loss(student, teacher)
        return {"style": 1e4 * style, "feature": 10.0 * feature}

    return terms


def random_batch(split: Split, rng: random.Random, s: Settings,
                 picked: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random crop and flip of each (input, cached teacher output) pair; ``picked`` collects
    the photos' indices."""
    from crdtool.train.teacher_cache import crop_pair

    xs, ts = [], []
    for _ in range(s.batch):
        i = rng.randrange(len(split.files))
        if picked is not None:
            picked.append(i)
        top, left = rng.randint(0, s.size - s.crop), rng.randint(0, s.size - s.crop)
        top, left = top - top % s.crop_align, left - left % s.crop_align
        flip = rng.random() < 0.5 and s.flip
        x, t = crop_pair(split.inputs[i], split.teacher[i], top, left, s.crop, flip)
        xs.append(x)
        ts.append(t)
    return torch.stack(xs), torch.stack(ts)


def teacher_features(s: Settings, teacher: torch.nn.Module, split: Split) -> list[torch.Tensor]:
    """The teacher's features after ``s.distill_blocks`` for every photo of ``split``, in float16 (four taps
    of 100 photos: 0.8 GB): computed once, as crdtool's teacher cache does for ``loss.lambda_distill``."""
    from crdtool.losses import FeatureCapture
    from crdtool.models.resnet import residual_taps

    if s.crop != s.size or s.flip or s.train_views:
        raise SystemExit("--lambda-distill needs whole, unmirrored photos: --crop 256 --no-flip, no --train-views")
    taps = residual_taps(teacher, list(s.distill_blocks))[0]
    seen: list[list[torch.Tensor]] = [[] for _ in taps]
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(split.files), 4):
            with FeatureCapture(taps) as got:
                teacher(split.inputs[i:i + 4])
            for kept, f in zip(seen, got):
                kept.append(f.half())
    log(f"teacher features after blocks {list(s.distill_blocks)}: {len(split.files)} photos "
        f"({time.perf_counter() - t0:.0f} s)")
    return [torch.cat(v) for v in seen]


def lr_factor(s: Settings, step: int) -> float:
    start = int(s.decay_from * s.steps)
    return 1.0 if step < start else max(0.0, 1.0 - (step - start) / max(1, s.steps - start))


def train_arm(s: Settings, arm: str, seed: int, train: Split, perceptual,
              features: list[torch.Tensor] | None = None) -> tuple[Any, dict[str, Any]]:
    """``features``: the teacher's features of each training photo (``teacher_features``), for the
    feature-distillation term; its 1x1 convs are built after the arm's D and train with the student."""
    from crdtool.losses import FeatureCapture, FeatureDistillLoss
    from crdtool.models import build_generator
    from crdtool.models.resnet import residual_taps

    torch.manual_seed(seed)
    rng = random.Random(f"real-teacher:{arm}:{seed}")
    student = build_generator(student_spec(arm, s)).train()
    averages = {d: WeightAverage(d, start_step=int(s.decay_from * s.steps)) for d in s.ema}
    losses = Losses(s, arm, perceptual)
    taps, width = residual_taps(student, list(s.distill_blocks)) if features else ([], 0)
    distill = FeatureDistillLoss(width, features[0].shape[1], len(taps)) if features else None
    params = list(student.parameters()) + (list(distill.parameters()) if distill else [])
    opt = torch.optim.Adam(params, lr=s.lr, betas=s.betas)
    t0, running = time.perf_counter(), {}
    for step in range(s.steps):
        for g in opt.param_groups:
            g["lr"] = s.lr * lr_factor(s, step)
        picked: list[int] = []
        x, t = random_batch(train, rng, s, picked)
        with FeatureCapture(taps) as got:
            out = student(x)
        loss, parts = losses.student_loss(out, t)
        if distill is not None:
            inner = s.lambda_distill * distill(got, [f[picked].float() for f in features])
            loss, parts["distill"] = loss + inner, float(inner.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for average in averages.values():
            average.update(student, step)
        d = losses.discriminator_step(out, t)
        if d is not None:
            parts["D"] = d
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + v
        if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
            n = (step % s.log_every) + 1
            log(f"{arm} seed {seed} step {step + 1}/{s.steps} " +
                " ".join(f"{k}={v / n:.4g}" for k, v in running.items()) +
                f" ({(time.perf_counter() - t0) / (step + 1):.2f} s/step)")
            running = {}
    timing = {"train_seconds": round(time.perf_counter() - t0, 1),
              "s_per_step": round((time.perf_counter() - t0) / s.steps, 3)}
    return student.eval(), {variant_name(d): a.model.eval() for d, a in averages.items()}, timing


def variant_name(decay: float) -> str:
    return f"ema{decay:g}"


def variants_dir(s: Settings, arm: str, seed: int) -> Path:
    """The raw and other-EMA students of an EMA run (not committed: the run's student is the first EMA)."""
    return s.work_dir / "variants" / f"{arm}-seed{seed}"


# ----------------------------------------------------------------------------- metrics


def fidelity_scores(outputs: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    from crdtool.metrics.fidelity import fidelity

    f = fidelity(outputs, teacher)
    return {"psnr_vs_teacher": f.psnr_db, "ssim_vs_teacher": f.ssim}


class Scorer:
    """FID/KID against the teacher's testA outputs. Inception is the expensive part on a shared CPU
    (~100x a student's forward), so features are kept on disk per name and scoring runs after training."""

    def __init__(self, s: Settings, splits: dict[str, Split], cache):
        self.s, self.splits, self.cache = s, splits, cache
        self._inception = None

    def features(self, name: str, images: torch.Tensor) -> np.ndarray:
        from crdtool.metrics import extract_features, load_inception
        from crdtool.metrics.fid import to_uint8_images

        path = self.s.work_dir / "features" / f"{name}.npy"
        if path.is_file():
            return np.load(path)
        if self._inception is None:
            self._inception = load_inception()
        t0 = time.perf_counter()
        feats = extract_features(self._inception, [to_uint8_images(images)], batch_size=25)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
        log(f"Inception features of {name}: {len(feats)} images, {time.perf_counter() - t0:.0f} s")
        return feats

    def score(self, name: str, outputs: torch.Tensor) -> dict[str, float]:
        """Paired: outputs on the first ``fid_images`` testA photos vs the teacher's outputs on the same photos."""
        n = self.s.fid_images
        ref = self.features(f"teacher-testA-n{n}", self.splits["test"].teacher[:n])
        return self._distances(self.features(f"{name}-n{n}", outputs[:n]), ref, "")

    def score_dist(self, name: str, outputs: torch.Tensor) -> dict[str, float]:
        """Distribution: outputs on the held-out set E vs the teacher's outputs on the disjoint set R."""
        n = self.s.dist_fid_images
        ref = self.features(f"teacher-heldout-reference-dist{n}", self.heldout()[1].teacher)
        return self._distances(self.features(f"{name}-dist{n}", outputs), ref, "dist_")

    def heldout(self) -> tuple[Split, Split]:
        if "heldout-evaluated" not in self.splits:
            e, r = heldout_sets(self.s, self.cache)
            self.splits.update({"heldout-evaluated": e, "heldout-reference": r})
        return self.splits["heldout-evaluated"], self.splits["heldout-reference"]

    @staticmethod
    def _distances(feats: np.ndarray, ref: np.ndarray, kind: str) -> dict[str, float]:
        from crdtool.metrics import frechet_distance_from_features, kernel_inception_distance

        kid, kid_std = kernel_inception_distance(feats, ref, num_subsets=100, subset_size=min(200, len(ref)))
        return {f"fid_{kind}to_teacher": frechet_distance_from_features(feats, ref), f"kid_{kind}to_teacher": kid,
                f"kid_{kind}std": kid_std}


@torch.no_grad()
def translate(model, inputs: torch.Tensor) -> torch.Tensor:
    from crdtool.train.evaluate import translate as run

    return run(model, inputs, batch=10)


# ----------------------------------------------------------------------------- runs


def run_dir(s: Settings, arm: str, seed: int) -> Path:
    return s.results_dir / "real_teacher" / "runs" / f"{arm}-seed{seed}"


def run_arm(s: Settings, arm: str, seed: int, splits: dict[str, Split], perceptual,
            features: list[torch.Tensor] | None = None) -> dict:
    from crdtool.fileio import write_json_atomic
    from crdtool.models.checkpoints import save_generator

    folder = run_dir(s, arm, seed)
    done = folder / "metrics.json"
    if done.is_file():
        log(f"{arm} seed {seed}: done before, skipped")
        return json.loads(done.read_text())
    log(f"{arm} seed {seed}: training {s.steps} steps")
    raw, averaged, timing = train_arm(s, arm, seed, splits["train"], perceptual, features)
    variants = {"raw": raw, **averaged}
    student = variants.pop(variant_name(s.ema[0])) if s.ema else variants.pop("raw")
    save_generator(student, folder / "student.safetensors")
    metrics = fidelity_scores(translate(student, splits["test"].inputs), splits["test"].teacher)
    for name, model in variants.items():  # scored side by side with the run's student: the same trajectory
        save_generator(model, variants_dir(s, arm, seed) / f"{name}.safetensors")
        scores = fidelity_scores(translate(model, splits["test"].inputs), splits["test"].teacher)
        metrics.update({f"{name}_{k}": v for k, v in scores.items()})
    result = {"arm": arm, "seed": seed, "steps": s.steps, **timing, **_round(metrics), "command": command_line()}
    write_json_atomic(done, result)
    log(f"{arm} seed {seed}: PSNR {metrics['psnr_vs_teacher']:.2f} dB, SSIM {metrics['ssim_vs_teacher']:.4f}")
    return result


def score_fid(s: Settings, splits: dict[str, Split], scorer: Scorer, seeds: list[int]) -> None:
    """Add paired and distribution FID/KID to every finished run of ``seeds`` that lacks them (resumable,
    one run at a time: Inception is the slow part)."""
    from crdtool.fileio import write_json_atomic
    from crdtool.models.checkpoints import load_generator
    from crdtool.train.teacher_cache import weights_digest

    for seed in seeds:
        for arm in s.arms:
            done = run_dir(s, arm, seed) / "metrics.json"
            if not done.is_file():
                continue
            row = json.loads(done.read_text())
            files = {"": run_dir(s, arm, seed) / "student.safetensors",
                     **{f"{f.stem}_": f for f in sorted(variants_dir(s, arm, seed).glob("*.safetensors"))}}
            for prefix, path in files.items():
                dist = s.dist_fid_images > 0 and f"{prefix}fid_dist_to_teacher" not in row
                if f"{prefix}fid_to_teacher" in row and not dist:
                    continue
                student = load_generator(path)
                # named by the weights too: runs of other settings (steps, student) may share the work folder
                name = f"{arm}-seed{seed}-{weights_digest(student)[:12]}"
                scores = {}
                if f"{prefix}fid_to_teacher" not in row:
                    scores.update(scorer.score(name, translate(student, splits["test"].inputs)))
                if dist:
                    scores.update(scorer.score_dist(name, translate(student, scorer.heldout()[0].inputs)))
                row.update(_round({prefix + k: v for k, v in scores.items()}))
                write_json_atomic(done, row)
            log(f"{arm} seed {seed}: FID {row['fid_to_teacher']:.2f} paired, "
                f"{row.get('fid_dist_to_teacher', float('nan')):.2f} distribution")


def _round(d: dict[str, Any], n: int = 5) -> dict[str, Any]:
    return {k: (round(v, n) if isinstance(v, float) else v) for k, v in d.items()}


def references(s: Settings, splits: dict[str, Split], scorer: Scorer | None = None) -> dict[str, Any]:
    """The untranslated inputs and the teacher on a split disjoint from testA; FID/KID only with ``scorer``."""
    from crdtool.fileio import write_json_atomic

    cached = s.work_dir / "references.json"
    out = json.loads(cached.read_text()) if cached.is_file() else {}
    test = splits["test"]
    if "input" not in out:
        out = {"input": _round(fidelity_scores(test.inputs, test.teacher)), "teacher_ref_split": {}}
    if scorer is not None and "fid_to_teacher" not in out["input"]:
        out["input"].update(_round(scorer.score("input-testA", test.inputs)))
        out["teacher_ref_split"].update(_round(scorer.score("teacher-train", splits["train"].teacher)))
        out["fid_images"] = s.fid_images
    if scorer is not None and s.dist_fid_images > 0 and "fid_dist_to_teacher" not in out["input"]:
        evaluated, _ = scorer.heldout()
        out["input"].update(_round(scorer.score_dist("input-heldout-evaluated", evaluated.inputs)))
        # the floor: the teacher's own outputs on E against its outputs on R (two samples of one distribution)
        out["teacher_ref_split"].update(_round(scorer.score_dist("teacher-heldout-evaluated", evaluated.teacher)))
        out["dist_fid_images"] = s.dist_fid_images
    write_json_atomic(cached, out)
    return out


def cache_speedup(s: Settings, teacher, splits: dict[str, Split], perceptual) -> dict[str, Any]:
    """Seconds per student step (crd_vgg) with the teacher run on the batch vs read from the cache."""
    from crdtool.fileio import write_json_atomic
    from crdtool.models import build_generator

    cached = s.work_dir / "cache_speedup.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    rng = random.Random("speedup")
    student = build_generator(student_spec("crd_vgg", s)).train()
    losses = Losses(s, "crd_vgg", perceptual)
    opt = torch.optim.Adam(student.parameters(), lr=s.lr, betas=s.betas)

    def step(with_teacher: bool) -> float:
        t0 = time.perf_counter()
        x, t = random_batch(splits["train"], rng, s)
        if with_teacher:
            with torch.no_grad():
                t = teacher(x)
        loss, _ = losses.student_loss(student(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step(False), step(True)  # warm-up
    rounds = {"teacher_forward": [], "cache": []}
    for _ in range(3):  # alternate, so load changes hit both alike
        rounds["teacher_forward"].append(step(True))
        rounds["cache"].append(step(False))
    med = {k: float(np.median(v)) for k, v in rounds.items()}
    out = {"student_step_s_with_teacher_forward": round(med["teacher_forward"], 3),
           "student_step_s_with_cache": round(med["cache"], 3),
           "speedup": round(med["teacher_forward"] / med["cache"], 2),
           "what": f"median of 3 alternating crd_vgg student steps, batch {s.batch} of {s.crop} px crops"}
    write_json_atomic(cached, out)
    return out


# ----------------------------------------------------------------------------- deployment


def latency_rows(s: Settings, splits: dict[str, Split], arms: list[str]) -> dict[str, Any]:
    """ONNX fp32 and int8 (onnxruntime CPU) of the teacher and every seed-0 student."""
    from crdtool.bench.latency import measure_latency
    from crdtool.deploy.export import export_artifacts
    from crdtool.deploy.onnx import run_onnx
    from crdtool.metrics.fidelity import fidelity

    out: dict[str, Any] = {}
    test = splits["test"]
    calib = splits["train"].inputs[:16]
    sources = {"teacher": resolve_weights(s.teacher)}
    sources.update({a: run_dir(s, a, 0) / "student.safetensors" for a in arms
                    if (run_dir(s, a, 0) / "student.safetensors").is_file()})
    for name, src in sources.items():
        cached = s.work_dir / "latency" / f"{name}.json"
        if cached.is_file():
            out[name] = json.loads(cached.read_text())
            continue
        if name == "teacher":  # an official-layout .pth: store it as a crdtool file first
            from crdtool.models.checkpoints import load_generator, save_generator

            src = save_generator(load_generator(src), s.work_dir / "teacher.safetensors")
        # the teacher's int8 calibration alone would take many minutes here: teacher fp32 only
        exp = export_artifacts(src, s.work_dir / "export" / name, onnx=True, int8_cpu=name != "teacher",
                               images=calib, size=s.size, verify_images=2 if name == "teacher" else 8)
        row: dict[str, Any] = {}
        for kind, label in (("onnx-fp32", "fp32"), ("onnx-int8-qdq", "int8")):
            path = exp.artifacts.get(kind)
            if path is None:
                continue
            lat = measure_latency(path, "ort-cpu", batch=1, size=s.size, runs=30, threads=s.threads,
                                  max_seconds=20 if name == "teacher" else 10, images=str(s.data / "testA"))
            row[label] = {"median_ms": lat.median_ms, "p90_ms": lat.p90_ms, "runs": lat.runs, "error": lat.error}
            if label == "int8" and name != "teacher":
                outs = torch.from_numpy(np.concatenate([run_onnx(path, test.inputs[i:i + 10], threads=s.threads)
                                                        for i in range(0, len(test.inputs), 10)]))
                f = fidelity(outs, test.teacher)
                row[label].update(psnr_vs_teacher=round(f.psnr_db, 3), ssim_vs_teacher=round(f.ssim, 4))
        parity = {r.kind: (r.parity.to_dict() if r.parity else None) for r in exp.rows}
        row["parity_vs_pytorch"] = parity
        from crdtool.fileio import write_json_atomic

        write_json_atomic(cached, row)
        out[name] = row
    return out


# ----------------------------------------------------------------------------- aggregate


def mean_std(xs: list[float]) -> tuple[float, float | None]:
    if not xs:
        return float("nan"), None
    m = float(np.mean(xs))
    return m, (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def summarise(rows: list[dict], prefix: str = "") -> dict[str, Any]:
    """Mean, sample std and per-seed values of each metric of ``rows`` (keys ``prefix + metric``)."""
    out: dict[str, Any] = {}
    for k in ("psnr_vs_teacher", "ssim_vs_teacher", "fid_to_teacher", "kid_to_teacher", "fid_dist_to_teacher",
              "kid_dist_to_teacher"):
        have = [r for r in rows if prefix + k in r]  # FID/KID are scored after a seed's arms are trained
        m, sd = mean_std([r[prefix + k] for r in have])
        out[k] = None if not have else round(m, 5)
        out[k + "_std"] = round(sd, 5) if sd is not None else None
        out[k + "_per_seed"] = {str(r["seed"]): r[prefix + k] for r in have}
    return out


def _half_gap(arms: dict, best_psnr: str, key: str, input_value: float, floor_value: float):
    """The FID target (half the gap from the inputs to the floor), the best arm by ``key``, and whether the
    best arm by PSNR and the best by ``key`` meet it; None while no arm is scored."""
    scored = [a for a in arms if arms[a][key] is not None]
    if not scored:
        return None
    target = input_value - 0.5 * (input_value - floor_value)
    best = min(scored, key=lambda a: arms[a][key])
    by_psnr = arms[best_psnr][key] is not None and arms[best_psnr][key] <= target
    return round(target, 3), best, by_psnr, arms[best][key] <= target


def aggregate(s: Settings, rows: list[dict], refs: dict, speed: dict, lat: dict, teacher_info: dict) -> dict:
    arms: dict[str, Any] = {}
    for arm in s.arms:
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        if not mine:
            continue
        entry: dict[str, Any] = {"label": ARMS[arm], "seeds": [r["seed"] for r in mine],
                                 "residual_student": arm != "pixel_plain", **summarise(mine)}
        entry["s_per_step"] = round(float(np.mean([r["s_per_step"] for r in mine])), 3)
        prefixes = sorted({k[:-len("psnr_vs_teacher")] for r in mine for k in r if k.endswith("_psnr_vs_teacher")})
        if prefixes:  # an EMA run: its other weights of the same trajectories, side by side
            entry["student_weights"] = variant_name(s.ema[0]) if s.ema else "last step"
            entry["variants"] = {p[:-1]: summarise(mine, p) for p in prefixes}
        arms[arm] = entry
    inp, floor = refs["input"], refs["teacher_ref_split"]
    best = max(arms, key=lambda a: arms[a]["psnr_vs_teacher"]) if arms else None
    targets = None
    if best:
        b = arms[best]
        targets = {"best_arm_by_psnr": best,
                   "psnr_target_db": round(inp["psnr_vs_teacher"] + 1.0, 3),
                   "psnr_met": b["psnr_vs_teacher"] >= inp["psnr_vs_teacher"] + 1.0,
                   "ssim_met": b["ssim_vs_teacher"] > inp["ssim_vs_teacher"],
                   "stretch_28db_met": b["psnr_vs_teacher"] >= 28.0}
        if "fid_to_teacher" in floor:
            # The teacher on other photos is no floor when it scores above the inputs (FID on 50 images is
            # dominated by content, and the inputs share the teacher's content); then the floor is the
            # teacher on the same photos: 0.
            floor_fid = 0.0 if floor["fid_to_teacher"] > inp["fid_to_teacher"] else floor["fid_to_teacher"]
            half = _half_gap(arms, best, "fid_to_teacher", inp["fid_to_teacher"], floor_fid)
            if half:
                target, best_fid, by_psnr, by_fid = half
                targets.update(fid_floor_used=round(floor_fid, 3), fid_target=target, best_arm_by_fid=best_fid,
                               fid_met_by_best_psnr_arm=by_psnr, fid_met_by_best_fid_arm=by_fid)
        if "fid_dist_to_teacher" in floor:
            # distribution FID: every row is scored against the same reference set, the floor included
            half = _half_gap(arms, best, "fid_dist_to_teacher", inp["fid_dist_to_teacher"],
                             floor["fid_dist_to_teacher"])
            if half:
                target, best_dist, by_psnr, by_fid = half
                targets.update(fid_dist_floor=floor["fid_dist_to_teacher"], fid_dist_target=target,
                               best_arm_by_fid_dist=best_dist, fid_dist_met_by_best_psnr_arm=by_psnr,
                               fid_dist_met_by_best_arm=by_fid)
    settings = {k: (rel(v) if isinstance(v, Path) else [rel(x) for x in v] if k == "extra_train" else v)
                for k, v in asdict(s).items()}
    return {"format": RESULT_FORMAT, "version": 1, "settings": settings, "teacher": teacher_info,
            "student": {"arch": student_spec("pixel", s).describe(), "gmacs_256": student_gmacs(s),
                        "note": ("the input skip adds no MACs; the colour skip ~0.8M (the per-pixel 3x3 matrix, "
                                 "pooling, a small MLP); the plain tanh student is 1.408G")},
            "references": refs, "arms": arms, "targets": targets, "cache_speedup": speed, "latency_ort_cpu": lat,
            **provenance("real_teacher.py", None),
            "run_commands": sorted({r.get("command", "python benchmarks/real_teacher.py") for r in rows}),
            "metrics_note": (f"testA (100 held-out photos) at 256 px. PSNR/SSIM per image vs the teacher's output, "
                             f"averaged over all 100. FID/KID of outputs vs the teacher's outputs on the first "
                             f"{s.fid_images} testA photos (TF-Inception pool3, {s.fid_images} vs {s.fid_images}: "
                             f"exact low-rank FID; KID 100 subsets of {min(50, s.fid_images)}); the floor row: the "
                             f"teacher's outputs on the first {s.fid_images} training photos vs those on testA. "
                             f"Distribution FID/KID: outputs on {s.dist_fid_images} held-out photos (E: testA, then "
                             f"the trainA photos after the first {s.train_images}) vs the teacher's outputs on "
                             f"{s.dist_fid_images} other held-out trainA photos (R); its floor row is the teacher's "
                             f"own outputs on E (KID: 100 subsets of {min(200, s.dist_fid_images)})")}


def provenance(script: str, argv: list[str] | None) -> dict[str, Any]:
    """Host (CPU, ISA, load), library versions and the command line of a results file."""
    from crdtool.bench.env import cpu_info, library_versions, load_avg

    return {"host": {**cpu_info(), "load_avg": load_avg()}, "versions": library_versions(),
            "command": command_line(script, argv)}


def write_report(res: dict[str, Any], out: Path, lines: list[str]) -> None:
    """``out``.json holds ``res``; ``out``.md the table ``lines``, then what was measured, where and how."""
    from crdtool.fileio import write_json_atomic

    write_json_atomic(out.with_suffix(".json"), res)
    lines = [*lines, "", f"{res['what']}. Host: {res['host']['cpu']}, load {res['host']['load_avg']}; made by "
             f"`{res['command']}`."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def command_line(script: str = "real_teacher.py", argv: list[str] | None = None) -> str:
    return " ".join([f"python benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def _f(v: Any, d: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def views_note(views: list[str]) -> str:
    return f"; the photos also {', '.join(views)}, each translated by the teacher" if views else ""


def detail_gan_note(st: dict) -> str:
    if "pixel_spectral_hfgan" not in st.get("arms", []):
        return ""
    return (f" (fine-detail GAN {st.get('lambda_gan_detail')}, its D ndf {st.get('detail_d_ndf', 32)} at "
            f"{st.get('detail_d_lr_scale', 0.1)} x the lr, judging each image minus its "
            f"{st.get('detail_sigma', 1.0)} px blur)")


def ema_note(st: dict) -> str:
    ema = st.get("ema") or []
    return f"; the student is the EMA (decay {ema[0]}) of its weights over the lr decay" if ema else ""


def extra_note(st: dict) -> str:
    folders, n = st.get("extra_train") or [], st.get("extra_train_images", 0)
    return (f" and {'the first ' + str(n) + ' photos' if n else 'all photos'} of {', '.join(folders)}"
            if folders else "")


def pool_note(pool: int) -> str:
    return f", in {pool}x{pool} blocks of bins" if pool > 1 else ""


def write_markdown(res: dict, path: Path) -> None:
    stu = res["student"]
    lines = [f"# Real teacher (vintagify CycleGAN, 56.80G) -> {stu['arch']} student ({stu['gmacs_256']:.3f}G), "
             "testA", "",
             f"| row | PSNR vs teacher (dB) | SSIM vs teacher | FID paired (n={res['settings']['fid_images']}) | "
             f"KID paired | FID distribution (n={res['settings']['dist_fid_images']}) | KID distribution | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    refs = res["references"]
    inp, floor = refs["input"], refs["teacher_ref_split"]
    lines.append(f"| untranslated input | {_f(inp['psnr_vs_teacher'])} | {_f(inp['ssim_vs_teacher'], 4)} | "
                 f"{_f(inp.get('fid_to_teacher'))} | {_f(inp.get('kid_to_teacher'), 4)} | "
                 f"{_f(inp.get('fid_dist_to_teacher'))} | {_f(inp.get('kid_dist_to_teacher'), 4)} | - |")
    lines.append(f"| the teacher itself (paired: on 50 of its training photos, other content than testA's; "
                 f"distribution: on E) | - | - | {_f(floor.get('fid_to_teacher'))} | "
                 f"{_f(floor.get('kid_to_teacher'), 4)} | {_f(floor.get('fid_dist_to_teacher'))} | "
                 f"{_f(floor.get('kid_dist_to_teacher'), 4)} | - |")
    for arm, a in res["arms"].items():
        def ms(k: str, d: int) -> str:
            sd = a.get(k + "_std")
            return _f(a[k], d) + (f" ± {_f(sd, d)}" if sd is not None else "")
        lines.append(f"| {arm}: {a['label']} | {ms('psnr_vs_teacher', 2)} | {ms('ssim_vs_teacher', 4)} | "
                     f"{ms('fid_to_teacher', 2)} | {ms('kid_to_teacher', 4)} | {ms('fid_dist_to_teacher', 2)} | "
                     f"{ms('kid_dist_to_teacher', 4)} | {len(a['seeds'])} |")
    lines += variant_lines(res["arms"])
    t = res.get("targets")
    if t:
        fid = (f"FID <= {t['fid_target']} (half the gap from the input to a floor of {t['fid_floor_used']}) "
               f"{'met' if t['fid_met_by_best_fid_arm'] else 'MISSED'} by the best arm by FID "
               f"(**{t['best_arm_by_fid']}**)." if "fid_target" in t else "FID: not scored yet.")
        if "fid_dist_target" in t:
            fid += (f" Distribution FID <= {t['fid_dist_target']} (half the gap from the input to the teacher's own "
                    f"floor of {_f(t['fid_dist_floor'])}) {'met' if t['fid_dist_met_by_best_arm'] else 'MISSED'} "
                    f"by the best arm by distribution FID (**{t['best_arm_by_fid_dist']}**).")
        lines += ["", f"Best arm by PSNR: **{t['best_arm_by_psnr']}**. "
                  f"Targets: PSNR >= {t['psnr_target_db']} dB {'met' if t['psnr_met'] else 'MISSED'}; "
                  f"SSIM above the input's {'met' if t['ssim_met'] else 'MISSED'}; {fid}"]
    sp = res.get("cache_speedup") or {}
    if sp:
        lines += ["", f"Teacher cache: a student step takes {sp['student_step_s_with_teacher_forward']} s with the "
                  f"teacher's forward and {sp['student_step_s_with_cache']} s with the cache ({sp['speedup']}x; "
                  f"{sp['what']})."]
    lat = res.get("latency_ort_cpu") or {}
    if lat:
        lines += ["", "| model | ORT fp32 median ms | ORT int8 median ms | int8 PSNR vs teacher | int8 SSIM vs teacher |",
                  "|---|---|---|---|---|"]
        for name, row in lat.items():
            i8 = row.get("int8", {})
            lines.append(f"| {name} | {_f(row.get('fp32', {}).get('median_ms'), 1)} | {_f(i8.get('median_ms'), 1)} | "
                         f"{_f(i8.get('psnr_vs_teacher'))} | {_f(i8.get('ssim_vs_teacher'), 4)} |")
    st = res["settings"]
    lines += ["", res["metrics_note"] + "."]
    lines += ["", f"Settings: {st['train_images']} training photos (first of trainA){extra_note(st)}, "
              f"{st['steps']} steps of batch "
              f"{st['batch']} random {st['crop']} px crops of (input, cached teacher output)"
              f"{', offsets in multiples of ' + str(st['crop_align']) if st.get('crop_align', 1) > 1 else ''}"
              f"{', no flips' if not st.get('flip', True) else ''}"
              f"{views_note(st.get('train_views') or [])}, Adam lr {st['lr']} "
              f"betas {st['betas']}, linear decay over the last {int(100 * (1 - st['decay_from']))}% of steps; "
              f"lambda pixel {st['lambda_pixel']}{coarse_note(st)}{feature_note(st)}, CRD {st['lambda_crd']}, "
              f"GAN {st['lambda_gan']}"
              f"{detail_gan_note(st)}{ema_note(st)}, detail "
              f"{st.get('lambda_detail')}, spectral {st.get('lambda_spectral')} (from {st.get('spectral_min_freq')} "
              f"cycles/px{pool_note(st.get('spectral_pool', 1))}); "
              f"VGG-19 style 1e4 / feature 10. Host: {res['host']['cpu']} ({', '.join(res['host']['cpu_flags'])}), "
              f"{st['threads']} threads, load {res['host']['load_avg']}. Runs made by: "
              f"{', '.join('`' + c + '`' for c in res['run_commands'])}; this file by `{res['command']}`."]
    path.write_text("\n".join(lines) + "\n")


def coarse_note(st: dict) -> str:
    return f" (+ {st['lambda_coarse']} on both blurred by 1 px)" if st.get("lambda_coarse") else ""


def feature_note(st: dict) -> str:
    return (f", teacher features {st['lambda_distill']} (after blocks {list(st['distill_blocks'])})"
            if st.get("lambda_distill") else "")


def variant_lines(arms: dict) -> list[str]:
    """A table of an EMA run's weights side by side: the run's student, the last step's weights, other EMAs."""
    lines: list[str] = []
    for arm, a in arms.items():
        if not a.get("variants"):
            continue
        lines += ["", f"{arm}, the same training runs, other weights (the row above is {a['student_weights']}; "
                  "EMAs average the weights from the start of the lr decay on):", "",
                  "| weights | PSNR (dB) | SSIM | FID paired | FID distribution | FID distribution per seed |",
                  "|---|---|---|---|---|---|"]
        for name, v in {a["student_weights"]: a, **a["variants"]}.items():
            per_seed = ", ".join(f"{k}: {_f(x)}" for k, x in v["fid_dist_to_teacher_per_seed"].items())
            lines.append(f"| {name} | {_f(v['psnr_vs_teacher'])} | {_f(v['ssim_vs_teacher'], 4)} | "
                         f"{_f(v['fid_to_teacher'])} | {_f(v['fid_dist_to_teacher'])} | {per_seed or '-'} |")
    return lines


def write_grid(s: Settings, splits: dict[str, Split], arms: list[str], path: Path, rows: int = 6) -> None:
    from crdtool.models.checkpoints import load_generator
    from crdtool.train.evaluate import save_grid

    test = splits["test"]
    pick = torch.linspace(0, len(test.files) - 1, rows).long()
    cols = [test.inputs[pick], test.teacher[pick]]
    names = ["input", "teacher"]
    for a in arms:
        f = run_dir(s, a, 0) / "student.safetensors"
        if f.is_file():
            cols.append(translate(load_generator(f), test.inputs[pick]))
            names.append(a)
    save_grid(path, cols, max_rows=rows)
    path.with_suffix(".columns.txt").write_text(" | ".join(names) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Settings.data, help="folder with trainA/ and testA/ "
                   "(default ../shared/data/photo2anime)")
    p.add_argument("--teacher", default=Settings.teacher)
    p.add_argument("--vgg", default=Settings.vgg)
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=Settings.steps)
    p.add_argument("--crop", type=int, default=Settings.crop, help="training crop side (of the 256 px photos)")
    p.add_argument("--crop-align", type=int, default=Settings.crop_align,
                   help="crop offsets in multiples of N (4: the generator's stride)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--train-views", nargs="+", default=[], choices=list(TRAIN_VIEWS),
                   help="more training pairs: each training photo also mirrored, upside down or turned, "
                   "and translated by the teacher")
    p.add_argument("--extra-train", nargs="+", type=Path, default=[],
                   help="more training photos: image folders outside --data (never evaluated on)")
    p.add_argument("--extra-train-images", type=int, default=0, help="at most N photos of each --extra-train "
                   "folder, the first by name (0: all)")
    p.add_argument("--lr", type=float, default=Settings.lr)
    p.add_argument("--lambda-spectral", type=float, default=Settings.lambda_spectral)
    p.add_argument("--spectral-pool", type=int, default=Settings.spectral_pool,
                   help="the spectral term compares N x N blocks of frequency bins (1: each bin)")
    p.add_argument("--lambda-coarse", type=float, default=Settings.lambda_coarse,
                   help="weight of an extra L1 between the output and the teacher's, both blurred by 1 px")
    p.add_argument("--lambda-gan-detail", type=float, default=Settings.lambda_gan_detail,
                   help="weight of the fine-detail GAN (pixel_spectral_hfgan)")
    p.add_argument("--detail-d-ndf", type=int, default=Settings.detail_d_ndf,
                   help="the fine-detail D's width (PatchGAN ndf)")
    p.add_argument("--detail-sigma", type=float, default=Settings.detail_sigma,
                   help="the fine-detail D judges each image minus its Gaussian blur of N px")
    p.add_argument("--detail-d-lr-scale", type=float, default=Settings.detail_d_lr_scale,
                   help="the fine-detail D's rate as a multiple of --lr")
    p.add_argument("--lambda-distill", "--lambda-feature", type=float, default=Settings.lambda_distill,
                   help="weight of the MSE to the teacher's inner features (needs --crop 256 --no-flip; "
                   "--lambda-feature is its earlier name)")
    p.add_argument("--no-colour-skip", action="store_true", help="the student's skip passes the input unchanged")
    p.add_argument("--skip-filter", action="store_true", help="a learned 3x3 filter per channel on the colour "
                   "skip's input (use another --results-dir: the default arms are without it)")
    p.add_argument("--log-every", type=int, default=Settings.log_every)
    p.add_argument("--ema", nargs="+", type=float, default=[], help="EMA decays of the student's weights over "
                   "the lr decay phase: the first is the run's student; the raw weights and the others are "
                   "scored beside it")
    p.add_argument("--fid-images", type=int, default=Settings.fid_images,
                   help="paired FID: the first N testA photos, each scored against the teacher's output of it")
    p.add_argument("--dist-fid-images", type=int, default=Settings.dist_fid_images,
                   help="distribution FID: outputs on N held-out photos vs the teacher on N others (0: off)")
    p.add_argument("--train-images", type=int, default=Settings.train_images)
    p.add_argument("--threads", type=int, default=Settings.threads)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where real_teacher.* and real_teacher/ go")
    p.add_argument("--work-dir", type=Path, default=Settings.work_dir, help="references, timings and exports")
    p.add_argument("--cache-dir", type=Path, default=Settings.cache_dir, help="the teacher's cached outputs")
    p.add_argument("--aggregate-only", action="store_true", help="rewrite the result files from finished runs")
    p.add_argument("--score-only", action="store_true", help="score the finished runs' missing FID/KID, then "
                   "rewrite the result files; trains nothing")
    a = p.parse_args(argv)
    s = Settings(data=a.data.resolve(), teacher=a.teacher, vgg=a.vgg, arms=a.arms, seeds=a.seeds, steps=a.steps,
                 crop=a.crop, crop_align=a.crop_align, flip=not a.no_flip, lr=a.lr, train_views=a.train_views,
                 lambda_spectral=a.lambda_spectral, spectral_pool=a.spectral_pool,
                 lambda_gan_detail=a.lambda_gan_detail, lambda_coarse=a.lambda_coarse,
                 detail_d_lr_scale=a.detail_d_lr_scale, detail_sigma=a.detail_sigma, detail_d_ndf=a.detail_d_ndf,
                 lambda_distill=a.lambda_distill,
                 colour_skip=not a.no_colour_skip, skip_filter=a.skip_filter,
                 train_images=a.train_images, threads=a.threads,
                 extra_train=[f.resolve() for f in a.extra_train], extra_train_images=a.extra_train_images,
                 ema=a.ema, latency=not a.no_latency, log_every=a.log_every,
                 fid_images=a.fid_images, dist_fid_images=a.dist_fid_images,
                 results_dir=a.results_dir.resolve(), work_dir=a.work_dir.resolve(),
                 cache_dir=a.cache_dir.resolve())
    torch.set_num_threads(s.threads)
    from crdtool.train.teacher_cache import TeacherCache

    teacher = load_teacher(s)
    cache = TeacherCache(teacher, s.cache_dir)
    splits = build_splits(s, cache)
    scorer = Scorer(s, splits, cache)
    refs = references(s, splits)
    log(f"references: input {refs['input']}")
    if a.score_only:
        refs = references(s, splits, scorer)
        score_fid(s, splits, scorer, s.seeds)
        a.aggregate_only = True
    perceptual = None if a.aggregate_only else build_perceptual(s)
    speed = cache_speedup(s, teacher, splits, perceptual) if perceptual else {}
    if not speed and (s.work_dir / "cache_speedup.json").is_file():
        speed = json.loads((s.work_dir / "cache_speedup.json").read_text())
    log(f"cache speed-up: {speed}")
    if a.aggregate_only:
        finish(s, splits, refs, speed, cache, latency=False)
        return 0
    pending = any(not (run_dir(s, arm, k) / "metrics.json").is_file() for k in s.seeds for arm in s.arms)
    features = teacher_features(s, teacher, splits["train"]) if s.lambda_distill and pending else None
    for k, seed in enumerate(s.seeds):  # seed 0 of every arm first; FID (slow) after each seed's arms
        for arm in s.arms:
            run_arm(s, arm, seed, splits, perceptual, features)
            finish(s, splits, refs, speed, cache, latency=False)
        refs = references(s, splits, scorer)
        log(f"references: input {refs['input']}, teacher floor {refs['teacher_ref_split']}")
        score_fid(s, splits, scorer, [seed])
        finish(s, splits, refs, speed, cache, latency=s.latency and k == 0)
    return 0


def finish(s: Settings, splits, refs, speed, cache, latency: bool) -> None:
    rows = [json.loads(f.read_text()) for f in sorted((s.results_dir / "real_teacher" / "runs").glob("*/metrics.json"))]
    arms = [a for a in s.arms if any(r["arm"] == a for r in rows)]
    lat = latency_rows(s, splits, arms) if latency else {}
    if not lat and (s.work_dir / "latency").is_dir():
        lat = {f.stem: json.loads(f.read_text()) for f in sorted((s.work_dir / "latency").glob("*.json"))}
    teacher_info = {"weights": s.teacher, "arch": "resnet_9blocks ngf64, affine InstanceNorm", "gmacs_256": 56.80,
                    "cache": {"entries_per_split": {k: len(v.files) for k, v in splits.items()}, **cache.summary()}}
    res = aggregate(s, rows, refs, speed, lat, teacher_info)
    from crdtool.fileio import write_json_atomic

    write_json_atomic(s.results_dir / "real_teacher.json", res)
    write_markdown(res, s.results_dir / "real_teacher.md")
    write_grid(s, splits, arms, s.results_dir / "real_teacher.png")
    for arm in arms:
        src = run_dir(s, arm, 0) / "student.safetensors"
        if src.is_file():
            shutil.copyfile(src, s.results_dir / "real_teacher" / f"{arm}-seed0.safetensors")


if __name__ == "__main__":
    raise SystemExit(main())
