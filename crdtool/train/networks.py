"""The networks and optimizers of one distillation run, built from its recipe and placed by the Runtime.

Kept apart from the loop so that the step strategies, checkpoints and evaluation share one set of
modules: whatever one of them replaces (the best teacher so far, a compiled student) the others see.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.errors import CrdError
from crdtool.losses import FeatureDistillLoss
from crdtool.models import build_discriminator, build_generator
from crdtool.models.checkpoints import load_generator
from crdtool.models.resnet import residual_taps
from crdtool.recipe import Recipe
from crdtool.runtime import Runtime
from crdtool.train import state as ckpt
from crdtool.train.weight_average import WeightAverage, exported

MODULES = ("G_A", "G_B", "student", "D_A", "D_B", "distill")
OPTIMIZERS = ("opt_S", "opt_G", "opt_D")


class _BatchStatsNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises with the batch's own statistics in train and eval mode alike.

    What the official pix2pix test.py does without --eval (the model stays in train mode), minus its
    side effects: the running statistics are neither used nor updated, so the saved teacher is unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def use_batch_statistics(module: nn.Module) -> int:
    """Switch ``module``'s BatchNorm2d layers to batch statistics in place (same weights and state-dict keys).

    Eval mode stays as it is for everything else (e.g. no dropout), so every caller that puts the
    teacher in eval() (training step, evaluation, caches) sees the same teacher. Returns how many layers.
    """
    n = 0
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = _BatchStatsNorm2d  # a method override only: parameters and buffers stay
            n += 1
    return n


def set_requires_grad(modules: list[nn.Module | None], flag: bool) -> None:
    for m in modules:
        if m is not None:
            for p in m.parameters():
                p.requires_grad_(flag)


def frozen_copy(module: nn.Module) -> nn.Module:
    """An eval-mode copy without gradients: a teacher kept as it was at one moment."""
    out = copy.deepcopy(module).eval()
    set_requires_grad([out], False)
    return out


@dataclass
class Networks:
    """Teacher generators (G_A, and G_B for an online CycleGAN), student, discriminators, and the 1x1 convs of
    the feature distillation (``distill``, loss.lambda_distill > 0: trained with the student, never exported).

    ``fwd`` holds what the steps call: the same modules, except the student may be DDP-wrapped or
    compiled. ``best_G_A`` is the frozen best A->B teacher so far (train.teacher_select = "fid").
    """

    G_A: nn.Module
    G_B: nn.Module | None
    student: nn.Module
    D_A: nn.Module | None
    D_B: nn.Module | None
    best_G_A: nn.Module | None = None
    distill: nn.Module | None = None
    teacher_batchnorm_layers: int = 0  # > 0: the teacher normalises with each batch's statistics
    student_average: WeightAverage | None = None  # train.ema_decay > 0: the student's weight average
    fwd: dict[str, nn.Module | None] = field(default_factory=dict)

    @property
    def teacher(self) -> nn.Module:
        """The teacher the student distils from."""
        return self.best_G_A if self.best_G_A is not None else self.G_A

    @property
    def exported_student(self) -> nn.Module:
        """The student a run evaluates and writes: its weight average once that has started, else itself."""
        return exported(self.student, self.student_average)

    def named(self, with_best: bool = False) -> Iterator[tuple[str, nn.Module]]:
        """(name, module) of every network there is, under its checkpoint prefix."""
        for name in MODULES + (("best_G_A",) if with_best else ()):
            m = getattr(self, name)
            if m is not None:
                yield name, m

    def keep_best_teacher(self) -> None:
        self.best_G_A = frozen_copy(self.G_A)


def build_networks(recipe: Recipe, rt: Runtime, kind: str) -> Networks:
    """Networks for a schedule ``kind`` (see ``train.schedule``), on the runtime's device and layout.

    The build order is the initialisation order of an uninterrupted run: keep it, or runs change.
    """
    pretrained, pix2pix = kind == "pretrained", recipe.task == "pix2pix"
    teacher = recipe.teacher
    if pretrained:  # the file describes itself unless the recipe names the family explicitly
        G_A = load_generator(teacher.checkpoint, teacher.spec() if "arch" in teacher.model_fields_set else None)
    else:
        G_A = build_generator(teacher.spec())
    G_B = build_generator(teacher.spec()) if kind == "cyclegan" else None
    student = build_generator(recipe.student.spec())
    disc = recipe.discriminator
    uses_d = disc.student != "none" or not pretrained
    D_A = build_discriminator(6 if pix2pix else 3, disc.ndf, disc.n_layers, disc.norm) if uses_d else None
    D_B = build_discriminator(3, disc.ndf, disc.n_layers, disc.norm) if G_B is not None else None
    if disc.checkpoint is not None and D_A is not None:  # a resumed run's checkpoint overrides this later
        ckpt.load_discriminator_weights(D_A, disc.checkpoint)
    distill = feature_distill(recipe, G_A, student, pretrained) if recipe.loss.lambda_distill > 0 else None
    nets = Networks(*(rt.module(m) if m is not None else None for m in (G_A, G_B, student, D_A, D_B)),
                    distill=rt.module(distill) if distill is not None else None)
    if pretrained:
        nets.G_A.eval()
        set_requires_grad([nets.G_A], False)
        if teacher.batchnorm_stats == "batch":
            nets.teacher_batchnorm_layers = use_batch_statistics(nets.G_A)
    nets.fwd = {name: getattr(nets, name) for name in MODULES}
    return nets


def feature_distill(recipe: Recipe, teacher: nn.Module, student: nn.Module, pretrained: bool) -> FeatureDistillLoss:
    """The 1x1 convs and MSE of loss.lambda_distill, between the two generators' features at loss.distill_blocks."""
    src = recipe.source or "recipe"
    if not pretrained:
        raise CrdError(f"{src}: loss.lambda_distill needs a pretrained teacher (teacher.checkpoint): an online "
                       f"teacher's features change while it trains")
    widths = []
    for role, gen in (("teacher", teacher), ("student", student)):
        try:
            widths.append(residual_taps(gen, recipe.loss.distill_blocks)[1])
        except ValueError as e:
            raise CrdError(f"{src}: loss.distill_blocks: the {role}: {e}") from None
    return FeatureDistillLoss(widths[1], widths[0], len(recipe.loss.distill_blocks))


def distribute(nets: Networks, rt: Runtime) -> None:
    """Data parallel over ranks; the Runtime owns the process group (gloo on CPU, NCCL on GPU).

    The student, one forward per step, is wrapped in DDP. The online teacher's generators and
    discriminators are called several times per backward (CycleGAN: G_A on real A, on fake A and
    for identity), which DDP's reducer does not allow; their gradients are averaged with one
    flattened all-reduce per optimizer step instead (``Runtime.all_reduce_grads``), the same arithmetic.
    """
    if rt.distributed:
        nets.fwd["student"] = rt.wrap_ddp(nets.student)
        # identical initial weights on every rank (each rank seeded alike, but be explicit)
        for m in (nets.G_A, nets.G_B, nets.D_A, nets.D_B):
            if m is not None:
                rt.broadcast_module(m)
    if rt.compile:  # opt-in (train.compile): pays off on long GPU runs, not on short CPU ones
        nets.fwd["student"] = torch.compile(nets.fwd["student"])


@dataclass
class Optimizers:
    """Adam for the student (``opt_S``), the online teacher's generators (``opt_G``) and the discriminators
    (``opt_D``); ``step`` is backward and update under the Runtime's loss scaling and gradient averaging."""

    rt: Runtime
    opt_S: torch.optim.Optimizer
    opt_G: torch.optim.Optimizer | None
    opt_D: torch.optim.Optimizer | None
    d_lr_scale: float = 1.0  # discriminator.lr_scale: D's rate over the teacher's
    student_extra: list[nn.Parameter] = field(default_factory=list)  # in opt_S, outside the student's DDP
    # wrapper (the feature-distillation convs): their gradients are averaged here

    def named(self) -> Iterator[tuple[str, torch.optim.Optimizer]]:
        for name in OPTIMIZERS:
            opt = getattr(self, name)
            if opt is not None:
                yield name, opt

    def step(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        name = next(n for n, o in self.named() if o is opt)  # names the fp16 scaler in checkpoints
        # the student's DDP wrapper already averaged its gradients; the others are averaged here
        self.rt.backward_step(name, opt, loss, all_reduce=self.student_extra if opt is self.opt_S else True)

    def set_lrs(self, teacher_lr: float, student_lr: float) -> None:
        for opt, lr in ((self.opt_G, teacher_lr), (self.opt_S, student_lr),
                        (self.opt_D, teacher_lr * self.d_lr_scale)):
            if opt is not None:
                for g in opt.param_groups:
                    g["lr"] = lr


def build_optimizers(recipe: Recipe, rt: Runtime, nets: Networks) -> Optimizers:
    """Adam with the recipe's rate and betas (fused on CUDA); a frozen teacher gets none."""
    t = recipe.train
    adam: dict = dict(betas=(t.beta1, t.beta2))
    if rt.is_cuda:
        adam["fused"] = True

    def over(*modules: nn.Module | None, lr_scale: float = 1.0) -> torch.optim.Optimizer:
        params = [p for m in modules if m is not None for p in m.parameters()]
        return torch.optim.Adam(params, lr=t.lr * lr_scale, **adam)

    opt_G = over(nets.G_A, nets.G_B) if recipe.teacher.checkpoint is None else None
    scale = recipe.discriminator.lr_scale
    opt_D = over(nets.D_A, nets.D_B, lr_scale=scale) if nets.D_A is not None else None
    extra = list(nets.distill.parameters()) if nets.distill is not None else []
    return Optimizers(rt, over(nets.student, nets.distill), opt_G, opt_D, scale, extra)
