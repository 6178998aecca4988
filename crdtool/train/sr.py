"""Super-resolution distillation (recipe ``task = "sr"``): a pretrained ``rrdb`` teacher (optional) and an
SR student trained on random aligned HR/LR patches.

Student loss = ``lambda_hr`` L1(student, HR) + ``lambda_pixel`` L1(student, teacher) + ``lambda_crd``
CRD(student, teacher) + VGG feature/style terms (against the teacher's output, or the HR image without
a teacher) when ``loss.vgg_weights`` is set. No teacher (``teacher.checkpoint`` unset) is the plain
PSNR-oriented training of a student on HR images.

The teacher is frozen, so its output for a training image never changes: it is computed once per whole
LR image (``TeacherCache``, in memory and under ``<run>/teacher_cache``; ``train.teacher_cache`` =
memory / off as for the other tasks) and each step crops the patch its LR patch maps to. Batches are a
pure function of (seed, step), and checkpoints use ``crdtool.train.state``: a resumed run continues with
the batches an uninterrupted one would draw.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from crdtool.data.sr import SRPatches, augment_tensor, load_eval_set, to_tensor, to_uint8
from crdtool.errors import CrdError
from crdtool.fileio import atomic_path, ensure_writable_dir
from crdtool.metrics.sr import evaluate_sr, score_set
from crdtool.models import build_generator
from crdtool.models.registry import GeneratorSpec
from crdtool.recipe import Recipe
from crdtool.runtime import Runtime
from crdtool.train import state as ckpt
from crdtool.train.result import DistillResult
from crdtool.train.run_log import LOG_EVERY
from crdtool.train.weight_average import average_for, exported, save_student_files


def student_spec(recipe: Recipe) -> GeneratorSpec:
    """The student's spec with ``data.scale`` filled in (and checked against a searched description's)."""
    spec = recipe.student.spec()
    scale = recipe.data.scale
    if recipe.student.scale is None and spec.arch is None:
        spec = dataclasses.replace(spec, scale=scale).resolved()
    if spec.scale != scale:
        raise CrdError(f"student scale {spec.scale} does not match data.scale {scale}")
    return spec


def sr_teacher_cache(teacher: nn.Module | None, mode: str, run_dir: Path):
    """The teacher's whole-image outputs, kept in memory and (unless ``mode`` is "memory") in the run folder;
    None without a teacher or with train.teacher_cache = "off" (the teacher runs on each batch's LR patches)."""
    if teacher is None or mode == "off":
        return None
    from crdtool.train.teacher_cache import TeacherCache

    return TeacherCache(teacher, folder=None if mode == "memory" else run_dir / "teacher_cache")


def fingerprint(recipe: Recipe, student: nn.Module) -> dict[str, Any]:
    """What an SR checkpoint must agree on with the recipe that resumes it."""
    return {"student": student.spec.to_dict(), "seed": recipe.seed,  # type: ignore[attr-defined]
            "teacher": str(recipe.teacher.checkpoint) if recipe.teacher.checkpoint else None}


class SRTrainer:
    """Owns the student, the optional teacher, the optimizer and the step counter of one SR run."""

    def __init__(self, recipe: Recipe, run_dir: Path | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None, runtime: Runtime | None = None):
        if recipe.task != "sr":
            raise ValueError(f"SRTrainer needs a recipe with task = 'sr', got {recipe.task!r}")
        self.r = recipe
        t, d = recipe.train, recipe.data
        self.rt = runtime or Runtime.for_training(t)  # device, threads and seeds; SR trains in fp32 on one process
        self.rt.setup()
        self.device = self.rt.device
        self.run_dir = Path(run_dir or recipe.run_dir)
        self.on_progress = on_progress or (lambda info: None)
        self.step = 0
        self.rt.seed_everything(recipe.seed)
        self.patches = SRPatches([d.root / s for s in d.train_sets], d.scale, d.crop_size, recipe.seed, d.max_images)
        self.eval_pairs = load_eval_set(d.root / d.eval_sets[0], d.scale, max_images=d.eval_images)
        self.student = build_generator(student_spec(recipe)).to(self.device)
        self.teacher = self._load_teacher()
        self.cache = sr_teacher_cache(self.teacher, t.teacher_cache, self.run_dir)
        self._build_losses()
        self.opt = torch.optim.Adam(self.student.parameters(), lr=t.lr, betas=(t.beta1, t.beta2))
        per_epoch = max(1, len(self.patches) // d.batch_size)
        self.total_steps = t.max_steps if t.max_steps is not None else t.student_epochs * per_epoch
        self.average = average_for(t, self.total_steps)
        self._running: dict[str, float] = {}
        self._first_eval: dict[str, Any] | None = None
        self._last_eval: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup
    def _load_teacher(self) -> nn.Module | None:
        path = self.r.teacher.checkpoint
        if path is None:
            if self.r.loss.lambda_pixel > 0 or self.r.loss.kd != "none":
                raise CrdError(f"{self.r.source or 'recipe'}: task sr without teacher.checkpoint trains on HR "
                               "only; set loss.kd = \"none\" and loss.lambda_pixel = 0, or give a teacher")
            return None
        from crdtool.models.rrdb import load_rrdb

        teacher = load_rrdb(path).to(self.device).eval().requires_grad_(False)
        scale = getattr(teacher, "scale", None)
        if scale != self.r.data.scale:
            raise CrdError(f"teacher {path} upscales x{scale}, data.scale is {self.r.data.scale}")
        return teacher

    def _build_losses(self) -> None:
        from crdtool.losses import CRDLoss, PerceptualLoss, load_vgg16

        L = self.r.loss
        self.crd = None
        if L.kd == "crd" and self.teacher is not None and L.lambda_crd > 0:
            if self.r.data.crop_size % L.patch_size:
                raise CrdError(f"data.crop_size {self.r.data.crop_size} is not divisible by loss.patch_size "
                               f"{L.patch_size}")
            self.crd = CRDLoss(patch_size=L.patch_size, rows=L.rows, columns=L.columns, patches=L.patches,
                               distance_weight=L.distance_weight, angle_weight=L.angle_weight).to(self.device)
        elif L.kd == "instance_rkd":
            raise CrdError("task sr supports loss.kd = \"crd\" or \"none\"")
        self.perceptual = None
        if L.vgg_weights is not None and (L.lambda_style > 0 or L.lambda_feature > 0):
            self.perceptual = PerceptualLoss(load_vgg16(L.vgg_weights)).to(self.device)

    # ------------------------------------------------------------------ steps
    def teacher_patches(self, where: list[tuple[int, int, int, int]]) -> torch.Tensor:
        """The teacher's output patches for a batch's (image, top, left, aug): cached whole-image outputs."""
        s, p = self.r.data.scale, self.r.data.crop_size
        outs = []
        for i, top, left, aug in where:
            _, lr = self.patches.pair(i)
            full = self.cache.outputs([self.patches.files[i]], to_tensor(lr)[None].to(self.device),
                                      f"sr-x{s}-lr")[0]
            outs.append(augment_tensor(full[:, top * s:top * s + p, left * s:left * s + p], aug))
        return torch.stack(outs).to(self.device)

    def lr_at(self, step: int) -> float:
        """Constant for the first half of the steps, then linear decay to 0 (as the pretrained-teacher schedule)."""
        half = self.total_steps / 2
        return self.r.train.lr * (1.0 if step < half else max(0.0, (self.total_steps - step) / max(half, 1)))

    def train_step(self) -> dict[str, float]:
        L = self.r.loss
        lr_img, hr, where = self.patches.batch(self.step, self.r.data.batch_size)
        lr_img, hr = lr_img.to(self.device), hr.to(self.device)
        target = None
        if self.cache is not None:
            target = self.teacher_patches(where)
        elif self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(lr_img).float()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        out = self.student(lr_img)
        terms: dict[str, torch.Tensor] = {}
        if L.lambda_hr > 0:
            terms["hr"] = L.lambda_hr * F.l1_loss(out, hr)
        if target is not None and L.lambda_pixel > 0:
            terms["teacher"] = L.lambda_pixel * F.l1_loss(out, target)
        if self.crd is not None:
            terms["crd"] = L.lambda_crd * self.crd(out * 2 - 1, target * 2 - 1)
        if self.perceptual is not None:
            ref = target if target is not None else hr
            style, feature = self.perceptual(out * 2 - 1, ref * 2 - 1)
            terms["style"], terms["feature"] = L.lambda_style * style, L.lambda_feature * feature
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise CrdError(f"non-finite loss at step {self.step + 1}; stopped (last checkpoint: "
                           f"{ckpt.latest_checkpoint(self.run_dir)})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.average is not None:
            self.average.update(self.student, self.step)
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    # ------------------------------------------------------------------ evaluation
    def _upscale(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            return model(x.to(self.device)).float().cpu()

        return run

    def teacher_eval_outputs(self) -> list[np.ndarray]:
        """The teacher's uint8 outputs on the evaluation images (cached like the training outputs)."""
        view = f"sr-x{self.r.data.scale}-eval"
        outs = []
        for pair in self.eval_pairs:
            x = to_tensor(pair.lr)[None].to(self.device)
            with torch.no_grad():
                y = self.cache.outputs([pair.path], x, view) if self.cache is not None else self.teacher(x)
            outs.append(to_uint8(y[0].float().cpu()))
        return outs

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        student = exported(self.student, self.average)
        student.eval()
        score, outs = evaluate_sr(self._upscale(student), self.eval_pairs, self.r.data.scale)
        row: dict[str, Any] = {"kind": "eval", "step": self.step, "set": self.r.data.eval_sets[0],
                               "psnr_y": score.psnr, "ssim_y": score.ssim}
        if self.teacher is not None:
            if not hasattr(self, "_teacher_eval"):
                self._teacher_eval = self.teacher_eval_outputs()
            fid = score_set(outs, self._teacher_eval, [p.name for p in self.eval_pairs], self.r.data.scale)
            row.update(psnr_vs_teacher=fid.psnr, ssim_vs_teacher=fid.ssim)
        # what the distill summary shows: fidelity to the teacher, or to HR without one
        row.update(psnr_db=row.get("psnr_vs_teacher", score.psnr), ssim=row.get("ssim_vs_teacher", score.ssim))
        student.train()
        self._save_samples(outs)
        return row

    def _save_samples(self, outs: list[np.ndarray]) -> None:
        """samples/step-N.png: the first evaluation image, bicubic-free: student output | HR."""
        pair = self.eval_pairs[0]
        hr = pair.hr if pair.hr.ndim == 3 else np.repeat(pair.hr[:, :, None], 3, axis=2)
        grid = np.concatenate([outs[0], hr], axis=1)
        path = self.run_dir / "samples" / f"step-{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        snap = ckpt.Snapshot()
        ckpt.module_weights("student", self.student, snap)
        ckpt.pack_optimizer("opt_S", self.opt, snap)
        if self.average is not None:
            self.average.pack(snap)
        ckpt.capture_rng(snap)
        snap.state.update(step=self.step, fingerprint=fingerprint(self.r, self.student), first_eval=self._first_eval)
        ckpt.save_checkpoint(self.run_dir, self.step, snap, keep=self.r.train.keep_checkpoints)
        save_student_files(self.student, self.average, self.run_dir,
                           {"recipe": self.r.name, "step": str(self.step), "task": "sr"})

    def restore(self, path: Path) -> None:
        snap = ckpt.load_checkpoint(path)
        saved = snap.state.get("fingerprint")
        if saved != json.loads(json.dumps(fingerprint(self.r, self.student))):
            raise CrdError(f"{path} was written by a different SR setup ({saved}); use a new output_dir")
        ckpt.load_module_weights("student", self.student, snap, path)
        ckpt.unpack_optimizer("opt_S", self.opt, snap)
        if self.average is not None:
            self.average.unpack(self.student, snap, path)
        ckpt.restore_rng(snap)
        self.step = int(snap.state["step"])
        self._first_eval = snap.state.get("first_eval")

    # ------------------------------------------------------------------ run
    def _log(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), **row}) + "\n")

    def describe(self) -> dict[str, Any]:
        """The "start" event, as the GAN loop's ``Distiller.describe``."""
        ckpt_path = self.r.teacher.checkpoint
        return {"event": "start", "rank": 0, "step": self.step, "total": self.total_steps, "name": self.r.name,
                "teacher": f"rrdb x{self.r.data.scale} ({ckpt_path.name})" if self.teacher is not None else "none",
                "student": self.student.spec.describe(), "device": str(self.device),  # type: ignore[attr-defined]
                "run_dir": str(self.run_dir), "notes": []}

    def run(self, resume: bool = False, on_start: Callable[[dict[str, Any]], None] | None = None) -> DistillResult:
        """Train to ``total_steps`` (or Ctrl-C); ``on_start`` gets ``describe()`` once a resumed run is restored."""
        ensure_writable_dir(self.run_dir)
        last = ckpt.latest_checkpoint(self.run_dir)
        if last is not None and not resume:
            raise CrdError(f"{self.run_dir} already has checkpoints; pass --resume to continue it, or use a new "
                           "output_dir")
        resumed_from = None
        if last is not None:
            self.restore(last)
            resumed_from = self.step
        if on_start is not None:
            on_start(self.describe())
        if resumed_from is not None and self.step >= self.total_steps:
            return DistillResult(self.run_dir, self.run_dir / "student.safetensors",
                                 Path(self.r.teacher.checkpoint or ""), self.step, self.step, None,
                                 self._first_eval, already_finished=True, resumed_from=resumed_from)
        (self.run_dir / "recipe.toml").write_text(self.r.to_toml())
        start = time.time()
        t = self.r.train
        if self._first_eval is None:
            self._first_eval = self.evaluate()
            self._log(self._first_eval)
        interrupted = False
        try:
            while self.step < self.total_steps:
                losses = self.train_step()
                for k, v in losses.items():
                    self._running[k] = self._running.get(k, 0.0) + v
                if self.step % LOG_EVERY == 0 or self.step == self.total_steps:
                    n = LOG_EVERY if self.step % LOG_EVERY == 0 else self.step % LOG_EVERY
                    means = {k: v / n for k, v in self._running.items()}
                    self._log({"kind": "train", "step": self.step, "total": self.total_steps,
                               "lr": self.lr_at(self.step - 1), **means})
                    self.on_progress({"event": "step", "step": self.step, "losses": means})
                    self._running = {}
                if self.step % t.eval_every == 0 and self.step < self.total_steps:
                    self._last_eval = self.evaluate()
                    self._log(self._last_eval)
                if self.step % t.checkpoint_every == 0:
                    self.save()
        except KeyboardInterrupt:
            interrupted = True
        if not interrupted:
            self._last_eval = self.evaluate()
            self._log(self._last_eval)
        self.save()
        teacher_path = self.r.teacher.checkpoint or Path("")
        return DistillResult(run_dir=self.run_dir, student_path=self.run_dir / "student.safetensors",
                             teacher_path=Path(teacher_path), steps=self.step, student_steps=self.step,
                             last_eval=self._last_eval, first_eval=self._first_eval, interrupted=interrupted,
                             seconds=time.time() - start, resumed_from=resumed_from)

