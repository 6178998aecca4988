"""The Pix2Pix joint step: the teacher's discriminator, then the teacher (hinge GAN + L1 to the ground
truth), then the student, on one batch. The student learns from the teacher's output before that
step's update, so teacher and student see the same teacher in a step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crdtool.train.networks import set_requires_grad
from crdtool.train.step_tools import StepContext, as_floats
from crdtool.train.student_step import StudentStep


class Pix2PixJointStep:
    def __init__(self, ctx: StepContext, student_step: StudentStep):
        self.ctx, self.student_step = ctx, student_step

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        ctx = self.ctx
        rt, nets, gan = ctx.rt, ctx.nets, ctx.criteria.gan
        real_A, real_B = rt.tensor(batch["A"]), rt.tensor(batch["B"])
        G, D = nets.fwd["G_A"], nets.fwd["D_A"]
        terms: dict[str, torch.Tensor] = {}
        with rt.autocast():
            fake_B = G(real_A)
        teacher_out = fake_B.detach().float()
        set_requires_grad([nets.D_A], True)
        with rt.autocast():
            terms["D"] = gan.discriminator(D(torch.cat([real_A, real_B], 1)),
                                           D(torch.cat([real_A, fake_B.detach()], 1)))
        ctx.update(ctx.opts.opt_D, terms["D"], terms)
        set_requires_grad([nets.D_A], False)
        with rt.autocast():
            terms["G_gan"] = gan.generator(nets.D_A(torch.cat([real_A, fake_B], 1)))  # frozen D: the raw module
            terms["G_l1"] = ctx.loss.lambda_l1 * F.l1_loss(fake_B.float(), real_B.float())
        ctx.update(ctx.opts.opt_G, terms["G_gan"] + terms["G_l1"], terms)
        set_requires_grad([nets.D_A], True)
        ctx.progress.teacher_steps += 1
        out = as_floats(terms)
        out.update({f"S_{k}": v for k, v in self.student_step(batch, teacher_out).items()})
        return out
