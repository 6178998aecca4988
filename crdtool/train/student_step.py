"""The student's step: distil the teacher's output (CRD or instance RKD, pixel L1, high-band amplitude
spectrum, perceptual terms, and the adversarial term of a frozen discriminator) and its inner features,
then, where the schedule asks, one discriminator update."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.errors import CrdError
from crdtool.losses import FeatureCapture, fine_detail
from crdtool.models.resnet import residual_taps
from crdtool.train.networks import set_requires_grad
from crdtool.train.step_tools import StepContext, as_floats
from crdtool.train.teacher_cache import TeacherCache


class StudentStep:
    """``pretrained``: the teacher is frozen and D keeps learning real vs teacher output here (its "teacher
    step"). ``paired``: D judges (input, output) pairs (Pix2Pix). ``d_real``: "data" or "teacher", what D
    learns as real; ``d_mode``: discriminator.student ("frozen", "updated" or "none"); ``d_sees``:
    discriminator.sees ("image", or "detail": the fine-detail band alone). With ``ctx.nets.distill``, the
    features after ``distill_blocks`` of both generators are compared too (from the cache where it has them)."""

    def __init__(self, ctx: StepContext, *, pretrained: bool, paired: bool, d_real: str, d_mode: str,
                 cache: TeacherCache | None = None, load_size: int = 0, crop_size: int = 0,
                 d_sees: str = "image", distill_blocks: list[int] | None = None):
        self.ctx, self.pretrained, self.paired, self.d_real, self.d_mode = ctx, pretrained, paired, d_real, d_mode
        self.d_sees = d_sees
        self.cache, self.load_size, self.crop_size = cache, load_size, crop_size
        distills = ctx.nets.distill is not None
        self.student_taps = residual_taps(ctx.nets.student, distill_blocks)[0] if distills else []
        self.teacher_taps = residual_taps(ctx.nets.teacher, distill_blocks)[0] if distills else []

    def __call__(self, batch: dict[str, torch.Tensor], teacher_out: torch.Tensor | None = None) -> dict[str, float]:
        """One student update; ``teacher_out`` is given by a joint step (the pre-update teacher's output)."""
        ctx = self.ctx
        real_A = ctx.rt.tensor(batch["A"])
        teacher_features = None
        if teacher_out is None:
            teacher_out, teacher_features = self.teacher_outputs(batch, real_A)
        set_requires_grad([ctx.nets.D_A], False)  # the teacher's D judges the student; it is not trained by it
        s, terms = self.terms(real_A, teacher_out, teacher_features)
        set_requires_grad([ctx.nets.D_A], True)
        if not ctx.update(ctx.opts.opt_S, sum(terms.values()), terms):
            return {}
        fakes, real_B = self._discriminator_examples(batch, teacher_out, s)
        if fakes:
            with ctx.rt.autocast():
                D = ctx.nets.fwd["D_A"]
                d_loss = sum(ctx.criteria.gan.discriminator(self._judge(D, real_A, real_B), self._judge(D, real_A, f))
                             for f in fakes) / len(fakes)
            terms["D_A"] = d_loss
            ctx.update(ctx.opts.opt_D, d_loss, terms)
        ctx.progress.student_steps += 1
        if ctx.nets.student_average is not None:
            ctx.nets.student_average.update(ctx.nets.student, ctx.progress.student_steps - 1)
        return as_floats(terms)

    def teacher_outputs(self, batch: dict[str, torch.Tensor],
                        real_A: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The teacher's outputs for the batch, and its features at the taps (None without feature
        distillation): from the cache where it holds the crops, else computed."""
        rt, taps = self.ctx.rt, len(self.teacher_taps)
        if self.cache is not None and "A_crop" in batch:
            where = (list(batch["A_path"]), batch["A_crop"], self.load_size, self.crop_size)
            out = rt.tensor(self.cache.batch_crops(*where))
            inner = rt.tensor(self.cache.batch_crops(*where, features=True)).chunk(taps, 1) if taps else None
            return out, inner
        teacher = self.ctx.nets.teacher
        with torch.inference_mode(), rt.autocast(), FeatureCapture(self.teacher_taps) as got:
            was = teacher.training
            teacher.eval()
            out = teacher(real_A).float()
            teacher.train(was)
        # clones: out of inference mode, so that autograd may save them
        return out.clone(), [f.float().clone() for f in got] if taps else None

    def terms(self, real_A: torch.Tensor, teacher_out: torch.Tensor,
              teacher_features: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The student's output and its loss terms (weights applied)."""
        ctx, L, crit = self.ctx, self.ctx.loss, self.ctx.criteria
        terms: dict[str, torch.Tensor] = {}
        with ctx.rt.autocast():
            with FeatureCapture(self.student_taps) as got:
                s = ctx.nets.fwd["student"](real_A)
            if crit.crd is not None and L.lambda_crd > 0:
                terms["crd"] = L.lambda_crd * crit.crd(s.float(), teacher_out.float())
            if crit.irkd is not None and L.lambda_crd > 0:
                terms["rkd"] = L.lambda_crd * crit.irkd(s.float(), teacher_out.float())
            if L.lambda_pixel > 0:
                terms["pixel"] = L.lambda_pixel * F.l1_loss(s.float(), teacher_out.float())
            if crit.spectral is not None:
                terms["spectral"] = L.lambda_spectral * crit.spectral(s.float(), teacher_out.float())
            if crit.perceptual is not None:
                style, feat = crit.perceptual(s, teacher_out)
                terms["style"] = L.lambda_style * style
                terms["feature"] = L.lambda_feature * feat
            if ctx.nets.D_A is not None and self.d_mode != "none" and L.lambda_gan > 0:
                terms["gan"] = L.lambda_gan * crit.gan.generator(self._judge(ctx.nets.D_A, real_A, s))
            if teacher_features is not None:
                terms["distill"] = L.lambda_distill * ctx.nets.distill(got, teacher_features)
        if not terms:
            raise CrdError("the student has no loss term: enable loss.kd, the perceptual loss or the discriminator")
        return s, terms

    def _discriminator_examples(self, batch: dict[str, torch.Tensor], teacher_out: torch.Tensor,
                                s: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(fakes, real) for D's update in this step; no fakes: D is not updated.

        Pretrained teacher: D keeps learning real vs teacher output. The 'updated' ablation: D also learns
        from the student's fakes. discriminator.real = "teacher": the teacher's output is real and the
        student's fake, always.
        """
        if self.ctx.nets.D_A is None or not (self.pretrained or self.d_mode == "updated"):
            return [], None
        if self.d_real == "teacher":
            return [s.detach()], teacher_out
        fakes = []
        if self.pretrained and not self.paired:
            fakes.append(teacher_out)
        if self.d_mode == "updated":
            fakes.append(s.detach())
        return fakes, self.ctx.rt.tensor(batch["B"])

    def _judge(self, D: nn.Module, real_A: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        if self.d_sees == "detail":
            img = fine_detail(img)
        return D(torch.cat([real_A, img], 1) if self.paired else img)
