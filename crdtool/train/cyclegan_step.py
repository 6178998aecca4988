"""The online CycleGAN teacher's step: both generators against their frozen discriminators, then both
discriminators on real images against pooled fakes (LSGAN, cycle L1, identity L1, as the reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crdtool.train.networks import set_requires_grad
from crdtool.train.pool import ImagePool
from crdtool.train.step_tools import StepContext, as_floats


class CycleGANTeacherStep:
    def __init__(self, ctx: StepContext, pool_A: ImagePool, pool_B: ImagePool):
        self.ctx, self.pool_A, self.pool_B = ctx, pool_A, pool_B

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        ctx = self.ctx
        rt, L, gan, nets = ctx.rt, ctx.loss, ctx.criteria.gan, ctx.nets
        real_A, real_B = rt.tensor(batch["A"]), rt.tensor(batch["B"])
        G_A, G_B, D_A, D_B = (nets.fwd[k] for k in ("G_A", "G_B", "D_A", "D_B"))
        set_requires_grad([nets.D_A, nets.D_B], False)
        terms: dict[str, torch.Tensor] = {}
        with rt.autocast():
            fake_B, fake_A = G_A(real_A), G_B(real_B)
            rec_A, rec_B = G_B(fake_B), G_A(fake_A)
            terms["G_A"] = gan.generator(nets.D_A(fake_B))  # frozen D: the raw module, not the DDP path
            terms["G_B"] = gan.generator(nets.D_B(fake_A))
            terms["cycle_A"] = L.lambda_cycle * F.l1_loss(rec_A.float(), real_A.float())
            terms["cycle_B"] = L.lambda_cycle * F.l1_loss(rec_B.float(), real_B.float())
            if L.lambda_identity > 0:
                terms["idt_A"] = L.lambda_cycle * L.lambda_identity * F.l1_loss(G_A(real_B).float(), real_B.float())
                terms["idt_B"] = L.lambda_cycle * L.lambda_identity * F.l1_loss(G_B(real_A).float(), real_A.float())
        if not ctx.update(ctx.opts.opt_G, sum(terms.values()), terms):
            return {}
        set_requires_grad([nets.D_A, nets.D_B], True)
        with rt.autocast():  # D sees a history of fakes (the image pool), as in the reference
            pooled_B = self.pool_B.query(fake_B.detach())
            terms["D_A"] = gan.discriminator(D_A(real_B), D_A(pooled_B))
            pooled_A = self.pool_A.query(fake_A.detach())
            terms["D_B"] = gan.discriminator(D_B(real_A), D_B(pooled_A))
        if not ctx.update(ctx.opts.opt_D, terms["D_A"] + terms["D_B"], terms):
            return {}
        ctx.progress.teacher_steps += 1
        return as_floats(terms)
