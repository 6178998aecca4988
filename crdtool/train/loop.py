"""The distillation loop: online teacher (CycleGAN or Pix2Pix) or pretrained teacher -> CRD student.

Schedules (docs/method.md):
- CycleGAN, online teacher: rounds of ``round_epochs`` teacher epochs followed by
  ``student_epochs_per_round`` student epochs distilled from the best A->B teacher so far.
- Pix2Pix, online teacher: teacher, discriminator and student stepped together every iteration
  (the student learns from the teacher's pre-update output).
- Pretrained teacher: student epochs only; the online discriminator (if used) keeps learning real vs
  teacher output in every step and is frozen for the student's term.

Everything random is a pure function of (seed, epoch, index) or lives in saved generator state, so
a run resumed from any checkpoint ends with exactly the weights of an uninterrupted run (CPU).
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.errors import CrdError
from crdtool.fileio import ensure_writable_dir, write_bytes_atomic
from crdtool.models import build_discriminator, build_generator, generator_stride
from crdtool.models.checkpoints import load_generator, save_generator
from crdtool.recipe import Recipe
from crdtool.runtime import Runtime
from crdtool.train import state as ckpt
from crdtool.train.evaluate import evaluate_student, save_grid
from crdtool.train.pool import ImagePool

LOG_EVERY = 20


@dataclass
class Phase:
    kind: str  # "teacher" | "student" | "joint"
    epochs: int


@dataclass
class Progress:
    """Counters saved in every checkpoint; together with the seed they fix all remaining randomness."""

    phase: int = 0
    epoch_in_phase: int = 0
    batch_in_epoch: int = 0
    teacher_epoch: int = 0
    student_epoch: int = 0
    step: int = 0
    teacher_steps: int = 0
    student_steps: int = 0
    skipped_steps: int = 0
    best_fid: dict[str, float] = field(default_factory=dict)


@dataclass
class DistillResult:
    run_dir: Path
    student_path: Path
    teacher_path: Path
    steps: int
    student_steps: int
    last_eval: dict[str, Any] | None
    first_eval: dict[str, Any] | None
    interrupted: bool = False
    seconds: float = 0.0
    already_finished: bool = False  # resumed a run that had nothing left to do; nothing was written
    resumed_from: int | None = None  # the step a resumed run continued from


def linear_decay(epoch: int, constant: int, decay: int) -> float:
    """The reference's 'linear' LambdaLR factor for 0-based ``epoch``.

    The reference computes ``1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1)`` with
    epoch_count = 1, so with 100 + 100 epochs the factor is 1.0 through epoch index 99, 0.990 at
    index 100 (the 101st epoch) and 0.0099 at index 199 (the 200th).
    """
    return 1.0 - max(0, epoch + 1 - constant) / float(decay + 1)


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


def _rank_prefix(rank: int) -> str:
    """Checkpoint key prefix of a rank's own state (rank 0's keys are unprefixed, as in a 1-process run)."""
    return "" if rank == 0 else f"rank{rank}."


def set_requires_grad(modules: list[nn.Module | None], flag: bool) -> None:
    for m in modules:
        if m is not None:
            for p in m.parameters():
                p.requires_grad_(flag)


class Distiller:
    """Owns models, optimizers and counters for one run; ``run()`` trains to the end or to a stop."""

    def __init__(self, recipe: Recipe, runtime: Runtime | None = None, run_dir: Path | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None):
        self.r = recipe
        t = recipe.train
        self.rt = runtime or Runtime.create(t.device, t.precision,
                                            {"auto": "auto", "on": True, "off": False}[t.channels_last], t.compile,
                                            threads=t.threads)
        self.rt.setup()  # threads, this rank's GPU, the process group
        self.run_dir = Path(run_dir or recipe.run_dir)
        self.on_progress = on_progress or (lambda info: None)
        self.rank, self.world, self.is_main = self.rt.rank, self.rt.world_size, self.rt.is_main
        self.progress = Progress()
        self._stop_signal: int | None = None
        self._first_eval: dict[str, Any] | None = None
        self._last_eval: dict[str, Any] | None = None
        self._running: dict[str, float] = {}
        self._running_n = 0
        self._check_sizes()
        self._build()

    # ------------------------------------------------------------------ setup
    def _check_sizes(self) -> None:
        d = self.r.data
        for role, g in (("teacher", self.r.teacher), ("student", self.r.student)):
            s = generator_stride(g.spec())
            if d.crop_size % s:
                raise CrdError(f"{self.r.source or 'recipe'}: data.crop_size {d.crop_size} is not divisible by the "
                               f"{role} generator's stride {s}")
        if self.r.loss.kd == "crd" and self.r.loss.patches > 0 and d.crop_size % self.r.loss.patch_size:
            raise CrdError(f"{self.r.source or 'recipe'}: data.crop_size {d.crop_size} is not divisible by "
                           f"loss.patch_size {self.r.loss.patch_size}")

    def _build(self) -> None:
        from crdtool.data import build_dataset, test_phase
        from crdtool.losses import CRDLoss, GANLoss, InstanceRKDLoss, PerceptualLoss, load_vgg16

        r, rt = self.r, self.rt
        rt.seed_everything(r.seed)
        d = r.data
        self.pix2pix = r.task == "pix2pix"
        self.pretrained = r.teacher.checkpoint is not None
        self.train_set = build_dataset(d.layout, d.root, "train", load_size=d.load_size, crop_size=d.crop_size,
                                       train=True, seed=r.seed, direction=d.direction, test_fraction=d.test_fraction)
        self.test_set = build_dataset(d.layout, d.root, test_phase(d.layout, d.root), load_size=d.load_size,
                                      crop_size=d.crop_size, train=False, seed=r.seed, direction=d.direction,
                                      test_fraction=d.test_fraction)
        self.notes: list[str] = []  # choices the run made on its own; the CLI prints them
        if d.layout == "folder":
            self.notes.append(f"data: training on {self.train_set.description}; evaluating on "
                              f"{self.test_set.description}")
        n_eval = min(d.eval_images, len(self.test_set))
        self.eval_inputs = torch.stack([self.test_set[i]["A"] for i in range(n_eval)])

        # teacher generator(s)
        if self.pretrained:
            self.G_A = load_generator(r.teacher.checkpoint, r.teacher.spec() if self._teacher_spec_given() else None)
        else:
            self.G_A = build_generator(r.teacher.spec())
        self.G_B = None
        if not self.pretrained and not self.pix2pix:
            spec_b = r.teacher.spec()
            self.G_B = build_generator(spec_b)
        self.student = build_generator(r.student.spec())
        disc = r.discriminator
        d_in = 6 if self.pix2pix else 3
        uses_d = disc.student != "none" or not self.pretrained
        self.D_A = build_discriminator(d_in, disc.ndf, disc.n_layers, disc.norm) if uses_d else None
        self.D_B = build_discriminator(3, disc.ndf, disc.n_layers, disc.norm) if self.G_B is not None else None
        if disc.checkpoint is not None and self.D_A is not None:  # a resumed run's checkpoint overrides this later
            ckpt.load_discriminator_weights(self.D_A, disc.checkpoint)
        self.d_real = self._d_real_mode()

        for name in ("G_A", "G_B", "student", "D_A", "D_B"):
            m = getattr(self, name)
            if m is not None:
                setattr(self, name, rt.module(m))
        if self.pretrained:
            self.G_A.eval()
            set_requires_grad([self.G_A], False)
            if r.teacher.batchnorm_stats == "batch":
                use_batch_statistics(self.G_A)
        self.teacher_cache = self._make_teacher_cache()
        self.best_G_A: nn.Module | None = None  # frozen copy when teacher_select = "fid"

        # losses
        L = r.loss
        self.gan = GANLoss(disc.gan_mode)
        self.crd = CRDLoss(patch_size=L.patch_size, rows=L.rows, columns=L.columns, patches=L.patches,
                           distance_weight=L.distance_weight, angle_weight=L.angle_weight,
                           per_image=self.pix2pix) if L.kd == "crd" else None
        self.irkd = InstanceRKDLoss() if L.kd == "instance_rkd" else None
        self.perceptual = None
        if L.vgg_weights is not None and (L.lambda_style > 0 or L.lambda_feature > 0):
            self.perceptual = rt.module(PerceptualLoss(load_vgg16(L.vgg_weights)))

        # optimizers (fused Adam on CUDA)
        t = r.train
        adam = dict(lr=t.lr, betas=(t.beta1, t.beta2))
        if rt.is_cuda:
            adam["fused"] = True
        self.opt_S = torch.optim.Adam(self.student.parameters(), **adam)
        self.opt_G = None
        if not self.pretrained:
            params = list(self.G_A.parameters()) + (list(self.G_B.parameters()) if self.G_B is not None else [])
            self.opt_G = torch.optim.Adam(params, **adam)
        self.opt_D = None
        if self.D_A is not None:
            params = list(self.D_A.parameters()) + (list(self.D_B.parameters()) if self.D_B is not None else [])
            self.opt_D = torch.optim.Adam(params, **adam)
        self.pool_A = ImagePool(t.pool_size if not self.pix2pix else 0, seed=r.seed + 11)
        self.pool_B = ImagePool(t.pool_size if not self.pix2pix else 0, seed=r.seed + 12)
        self.phases = self._plan()
        self.student_total_epochs = sum(p.epochs for p in self.phases if p.kind in ("student", "joint"))
        self.teacher_total = t.teacher_epochs + t.teacher_epochs_decay
        self._wrap_distributed()
        if self.rt.compile:  # opt-in (train.compile): pays off on long GPU runs, not on short CPU ones
            self.fwd["student"] = torch.compile(self.fwd["student"])

    def _d_real_mode(self) -> str:
        """What D learns as real with a pretrained teacher: "data" (target images; the teacher's outputs are
        fake) or "teacher" (the teacher's outputs; the student's are fake). "auto" picks "teacher" when the
        dataset has no target images (folder layout) and says so in ``notes``."""
        mode, src = self.r.discriminator.real, self.r.source or "recipe"
        has_targets = self.r.data.layout != "folder"
        if mode == "auto":
            mode = "data" if has_targets or not self.pretrained else "teacher"
            if mode == "teacher" and self.D_A is not None:
                self.notes.append("discriminator: no target-domain images (folder layout), so D learns the teacher's "
                                  "outputs as real and the student's as fake (discriminator.real = \"teacher\")")
        if mode == "teacher" and not self.pretrained:
            raise CrdError(f"{src}: discriminator.real = \"teacher\" needs a pretrained teacher (teacher.checkpoint)")
        if mode == "data" and not has_targets and self.D_A is not None:
            raise CrdError(f"{src}: discriminator.real = \"data\" needs target-domain images, and a folder layout "
                           f"has none: use \"teacher\" (or \"auto\"), or discriminator.student = \"none\"")
        return mode

    def _make_teacher_cache(self):
        """A ``TeacherCache`` of the frozen teacher's whole-image outputs, or None (train.teacher_cache)."""
        from crdtool.train.teacher_cache import TeacherCache

        mode, d, src = self.r.train.teacher_cache, self.r.data, self.r.source or "recipe"
        if mode == "auto":
            mode = "disk" if self.pretrained and d.layout == "folder" and not self.pix2pix else "off"
        if mode == "off":
            return None
        if not self.pretrained or self.pix2pix:
            raise CrdError(f"{src}: train.teacher_cache = \"{mode}\" needs a pretrained CycleGAN teacher "
                           f"(teacher.checkpoint); an online teacher changes every step")
        if d.layout != "folder":
            raise CrdError(f"{src}: train.teacher_cache = \"{mode}\" needs data.layout = \"folder\" "
                           f"(its samples say where each crop was cut)")
        folder = self.run_dir / "teacher_cache" if mode == "disk" else None
        where = f"on disk in {folder}" if folder is not None else "in memory"
        self.notes.append(f"teacher cache: each training image is translated once, whole at {d.load_size} px, and "
                          f"kept {where}; the student's crops are cut from that output")
        return TeacherCache(self.G_A, folder)

    def _cached_teacher_outputs(self, batch: dict) -> torch.Tensor:
        """The teacher's outputs for the batch's crops, cut from cached whole-image outputs."""
        from crdtool.data.images import load_image
        from crdtool.data.transforms import eval_transform
        from crdtool.train.teacher_cache import crop

        d, paths = self.r.data, list(batch["A_path"])
        full = self.teacher_cache.outputs_for(paths, f"resize{d.load_size}",
                                              lambda i: eval_transform(load_image(paths[i]), d.load_size))
        cuts = [crop(full[i], int(top), int(left), d.crop_size, bool(flip))
                for i, (top, left, flip) in enumerate(batch["A_crop"].tolist())]
        return self.rt.tensor(torch.stack(cuts))

    def _teacher_spec_given(self) -> bool:
        """For a pretrained teacher the file describes itself unless the recipe names the family explicitly."""
        return "arch" in self.r.teacher.model_fields_set

    def _plan(self) -> list[Phase]:
        t = self.r.train
        total = t.teacher_epochs + t.teacher_epochs_decay
        if self.pretrained:
            return [Phase("student", t.student_epochs)]
        if self.pix2pix:
            return [Phase("joint", total)]
        phases, done = [], 0
        while done < total:
            n = min(t.round_epochs, total - done)
            phases.append(Phase("teacher", n))
            done += n
            if t.student_epochs_per_round > 0:
                phases.append(Phase("student", t.student_epochs_per_round))
        return phases

    def _wrap_distributed(self) -> None:
        """Data parallel over ranks; the Runtime owns the process group (gloo on CPU, NCCL on GPU).

        The student, one forward per step, is wrapped in DDP. The online teacher's generators and
        discriminators are called several times per backward (CycleGAN: G_A on real A, on fake A and
        for identity), which DDP's reducer does not allow; their gradients are averaged with one
        flattened all-reduce per optimizer step instead (``Runtime.all_reduce_grads``), the same arithmetic.
        """
        self.fwd = {name: getattr(self, name) for name in ("G_A", "G_B", "student", "D_A", "D_B")}
        if not self.rt.distributed:
            return
        self.fwd["student"] = self.rt.wrap_ddp(self.student)
        # identical initial weights on every rank (each rank seeded alike, but be explicit)
        for m in (self.G_A, self.G_B, self.D_A, self.D_B):
            if m is not None:
                self.rt.broadcast_module(m)

    def _step(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        name = next(n for n in ("opt_S", "opt_G", "opt_D") if getattr(self, n) is opt)
        # the student's DDP wrapper already averaged its gradients; the others are averaged here
        self.rt.backward_step(name, opt, loss, all_reduce=opt is not self.opt_S)

    # ------------------------------------------------------------------ data
    def _batches(self, kind: str, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of one epoch in a (seed, kind, epoch)-determined order, from batch ``start`` on."""
        from crdtool.data import make_loader

        d = self.r.data
        key = epoch if kind != "student" else 1_000_000 + epoch  # student epochs draw other crops/orders
        yield from make_loader(self.train_set, d.batch_size, shuffle=True, seed=self.r.seed, epoch=key,
                               num_workers=d.num_workers, skip_batches=start, pin_memory=self.rt.is_cuda,
                               rank=self.rt.rank, world_size=self.rt.world_size)

    def _epoch_len(self) -> int:
        return (len(self.train_set) // self.rt.world_size) // self.r.data.batch_size

    # ------------------------------------------------------------------ steps
    def _check_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], opts: list) -> bool:
        if torch.isfinite(loss).item():
            return True
        p = self.progress
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        if self.r.train.nonfinite == "skip":
            for o in opts:
                if o is not None:
                    o.zero_grad(set_to_none=True)
            p.skipped_steps += 1
            return False
        last = ckpt.latest_checkpoint(self.run_dir)
        raise CrdError(f"non-finite loss at step {p.step + 1} ({detail}); stopped. Last good checkpoint: "
                       f"{last if last else 'none yet'} (train.nonfinite = \"skip\" skips such steps instead)")

    def _d_step(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, terms: dict, key: str) -> torch.Tensor:
        loss = self.gan.discriminator(D(real), D(fake.detach()))
        terms[key] = loss
        return loss

    def cyclegan_teacher_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        rt, L = self.rt, self.r.loss
        real_A, real_B = rt.tensor(batch["A"]), rt.tensor(batch["B"])
        G_A, G_B, D_A, D_B = (self.fwd[k] for k in ("G_A", "G_B", "D_A", "D_B"))
        set_requires_grad([self.D_A, self.D_B], False)
        terms: dict[str, torch.Tensor] = {}
        with rt.autocast():
            fake_B, fake_A = G_A(real_A), G_B(real_B)
            rec_A, rec_B = G_B(fake_B), G_A(fake_A)
            terms["G_A"] = self.gan.generator(self.D_A(fake_B))  # frozen D: the raw module, not the DDP path
            terms["G_B"] = self.gan.generator(self.D_B(fake_A))
            terms["cycle_A"] = L.lambda_cycle * F.l1_loss(rec_A.float(), real_A.float())
            terms["cycle_B"] = L.lambda_cycle * F.l1_loss(rec_B.float(), real_B.float())
            if L.lambda_identity > 0:
                terms["idt_A"] = L.lambda_cycle * L.lambda_identity * F.l1_loss(G_A(real_B).float(), real_B.float())
                terms["idt_B"] = L.lambda_cycle * L.lambda_identity * F.l1_loss(G_B(real_A).float(), real_A.float())
        loss_G = sum(terms.values())
        if not self._check_finite(loss_G, terms, [self.opt_G]):
            return {}
        self._step(self.opt_G, loss_G)
        set_requires_grad([self.D_A, self.D_B], True)
        with rt.autocast():
            loss_D = self._d_step(D_A, real_B, self.pool_B.query(fake_B.detach()), terms, "D_A") + \
                self._d_step(D_B, real_A, self.pool_A.query(fake_A.detach()), terms, "D_B")
        if not self._check_finite(loss_D, terms, [self.opt_D]):
            return {}
        self._step(self.opt_D, loss_D)
        self.progress.teacher_steps += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def _student_terms(self, real_A: torch.Tensor, teacher_out: torch.Tensor) -> tuple[torch.Tensor, dict]:
        L, rt = self.r.loss, self.rt
        terms: dict[str, torch.Tensor] = {}
        with rt.autocast():
            s = self.fwd["student"](real_A)
            if self.crd is not None and L.lambda_crd > 0:
                terms["crd"] = L.lambda_crd * self.crd(s.float(), teacher_out.float())
            if self.irkd is not None and L.lambda_crd > 0:
                terms["rkd"] = L.lambda_crd * self.irkd(s.float(), teacher_out.float())
            if L.lambda_pixel > 0:
                terms["pixel"] = L.lambda_pixel * F.l1_loss(s.float(), teacher_out.float())
            if self.perceptual is not None:
                style, feat = self.perceptual(s, teacher_out)
                terms["style"] = L.lambda_style * style
                terms["feature"] = L.lambda_feature * feat
            if self.D_A is not None and self.r.discriminator.student != "none" and L.lambda_gan > 0:
                d_in = torch.cat([real_A, s], 1) if self.pix2pix else s
                terms["gan"] = L.lambda_gan * self.gan.generator(self.D_A(d_in))
        if not terms:
            raise CrdError("the student has no loss term: enable loss.kd, the perceptual loss or the discriminator")
        return s, terms

    def student_step(self, batch: dict[str, torch.Tensor], teacher_out: torch.Tensor | None = None) -> dict[str, float]:
        """One student update. The teacher's D is frozen here (no grads, not stepped) unless mode 'updated'."""
        rt = self.rt
        real_A = rt.tensor(batch["A"])
        teacher = self.best_G_A if self.best_G_A is not None else self.G_A
        if teacher_out is None and self.teacher_cache is not None and "A_crop" in batch:
            teacher_out = self._cached_teacher_outputs(batch)
        if teacher_out is None:
            with torch.inference_mode(), rt.autocast():
                was = teacher.training
                teacher.eval()
                teacher_out = teacher(real_A).float()
                teacher.train(was)
            teacher_out = teacher_out.clone()
        set_requires_grad([self.D_A], False)
        s, terms = self._student_terms(real_A, teacher_out)
        set_requires_grad([self.D_A], True)
        loss = sum(terms.values())
        if not self._check_finite(loss, terms, [self.opt_S]):
            return {}
        self._step(self.opt_S, loss)
        mode = self.r.discriminator.student
        if self.D_A is not None and (self.pretrained or mode == "updated"):
            # pretrained teacher: D keeps learning real vs teacher output (its "teacher step");
            # 'updated' ablation: D also learns from the student's fakes.
            # discriminator.real = "teacher": the teacher's output is real and the student's fake, always.
            fakes = []
            if self.d_real == "teacher":
                real_B = teacher_out
                fakes.append(s.detach())
            else:
                real_B = rt.tensor(batch["B"])
                if self.pretrained and not self.pix2pix:
                    fakes.append(teacher_out)
                if mode == "updated":
                    fakes.append(s.detach())
            if fakes:
                with rt.autocast():
                    D = self.fwd["D_A"]
                    d_loss = sum(self.gan.discriminator(self._d_input(real_A, real_B, D),
                                                        self._d_input(real_A, f, D)) for f in fakes) / len(fakes)
                terms["D_A"] = d_loss
                if self._check_finite(d_loss, terms, [self.opt_D]):
                    self._step(self.opt_D, d_loss)
        self.progress.student_steps += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def _d_input(self, real_A: torch.Tensor, img: torch.Tensor, D: nn.Module) -> torch.Tensor:
        return D(torch.cat([real_A, img], 1) if self.pix2pix else img)

    def pix2pix_joint_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Teacher G, its D and the student together; the student distils the pre-update teacher output."""
        rt, L = self.rt, self.r.loss
        real_A, real_B = rt.tensor(batch["A"]), rt.tensor(batch["B"])
        G, D = self.fwd["G_A"], self.fwd["D_A"]
        terms: dict[str, torch.Tensor] = {}
        with rt.autocast():
            fake_B = G(real_A)
        teacher_out = fake_B.detach().float()
        set_requires_grad([self.D_A], True)
        with rt.autocast():
            loss_D = self._d_step(D, torch.cat([real_A, real_B], 1), torch.cat([real_A, fake_B.detach()], 1),
                                  terms, "D")
        if self._check_finite(loss_D, terms, [self.opt_D]):
            self._step(self.opt_D, loss_D)
        set_requires_grad([self.D_A], False)
        with rt.autocast():
            terms["G_gan"] = self.gan.generator(self.D_A(torch.cat([real_A, fake_B], 1)))
            terms["G_l1"] = L.lambda_l1 * F.l1_loss(fake_B.float(), real_B.float())
        loss_G = terms["G_gan"] + terms["G_l1"]
        if self._check_finite(loss_G, terms, [self.opt_G]):
            self._step(self.opt_G, loss_G)
        set_requires_grad([self.D_A], True)
        self.progress.teacher_steps += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out.update({f"S_{k}": v for k, v in self.student_step(batch, teacher_out).items()})
        return out

    # ------------------------------------------------------------------ schedule
    def _set_lrs(self, phase: Phase) -> None:
        t, p = self.r.train, self.progress
        lr_t = t.lr * linear_decay(p.teacher_epoch, t.teacher_epochs, t.teacher_epochs_decay)
        if phase.kind == "joint":
            lr_s = lr_t
        elif self.pretrained:  # no teacher epochs: the student's own schedule, half constant, half decay
            n = self.student_total_epochs
            lr_s = t.lr * linear_decay(p.student_epoch, n // 2, n - n // 2)
        else:
            # online CycleGAN teacher: as in the reference, the student follows the teacher's schedule;
            # a student round uses the rate of the teacher epoch it follows
            lr_s = t.lr * linear_decay(max(p.teacher_epoch - 1, 0), t.teacher_epochs, t.teacher_epochs_decay)
        for opt, lr in ((self.opt_G, lr_t), (self.opt_S, lr_s), (self.opt_D, lr_t)):
            if opt is not None:
                for g in opt.param_groups:
                    g["lr"] = lr

    def _select_teacher(self) -> None:
        """End of a teacher round: keep the best A->B teacher (tracked per direction)."""
        if self.r.train.teacher_select == "last" or self.pretrained:
            return
        from crdtool.train.teacher_select import teacher_fid  # lazy: only with Inception weights

        for direction, G in (("AtoB", self.G_A), ("BtoA", self.G_B)):
            if G is None:
                continue
            score = teacher_fid(self, direction, G)
            best = self.progress.best_fid.get(direction, math.inf)
            if score < best:
                self.progress.best_fid[direction] = score
                if direction == "AtoB":
                    self.best_G_A = copy.deepcopy(self.G_A).eval()
                    set_requires_grad([self.best_G_A], False)
            self._log({"kind": "teacher_eval", "direction": direction, "fid": score,
                       "best": self.progress.best_fid[direction]})

    # ------------------------------------------------------------------ checkpoints
    def fingerprint(self) -> dict[str, Any]:
        r = self.r
        return {"task": r.task, "teacher": r.teacher.spec().to_dict(), "student": r.student.spec().to_dict(),
                # where D's initial weights came from does not matter once a checkpoint holds them
                "discriminator": r.discriminator.model_dump(mode="json", exclude={"checkpoint"}),
                "pretrained": self.pretrained,
                "seed": r.seed, "batch_size": r.data.batch_size, "world_size": self.rt.world_size}

    def _pool_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        self.pool_A.pack("A", out, {})
        self.pool_B.pack("B", out, {})
        return out

    def snapshot(self, rank_pools: list[dict[str, torch.Tensor]] | None = None) -> ckpt.Snapshot:
        """Everything a resume needs; ``rank_pools`` are every rank's image pools (they differ per data shard)."""
        snap = ckpt.Snapshot()
        for name in ("G_A", "G_B", "student", "D_A", "D_B", "best_G_A"):
            m = getattr(self, name)
            if m is not None:
                ckpt.module_weights(name, m, snap)
        for name in ("opt_S", "opt_G", "opt_D"):
            opt = getattr(self, name)
            if opt is not None:
                ckpt.pack_optimizer(name, opt, snap)
        for k, pools in enumerate(rank_pools or [self._pool_tensors()]):
            snap.tensors.update({_rank_prefix(k) + key: t for key, t in pools.items()})
        ckpt.capture_rng(snap)  # rank 0's; every rank is seeded alike and draws alike from the global RNG
        ckpt.pack_scalers(self.rt.scaler_state(), snap)
        snap.state["progress"] = self.progress.__dict__.copy()
        snap.state["fingerprint"] = self.fingerprint()
        return snap

    def restore(self, path: Path) -> None:
        snap = ckpt.load_checkpoint(path)
        saved = snap.state.get("fingerprint")
        now = self.fingerprint()
        if saved != now:
            diff = next(k for k in now if saved is None or saved.get(k) != now[k])
            raise CrdError(f"checkpoint {path} does not match this recipe: '{diff}' differs "
                           f"({saved.get(diff) if saved else None!r} vs {now[diff]!r})")
        for name in ("G_A", "G_B", "student", "D_A", "D_B"):
            m = getattr(self, name)
            if m is not None:
                ckpt.load_module_weights(name, m, snap, path)
        if any(k.startswith("best_G_A.") for k in snap.weights):
            self.best_G_A = copy.deepcopy(self.G_A)
            ckpt.load_module_weights("best_G_A", self.best_G_A, snap, path)
            self.best_G_A.eval()
            set_requires_grad([self.best_G_A], False)
        for name in ("opt_S", "opt_G", "opt_D"):
            opt = getattr(self, name)
            if opt is not None:
                ckpt.unpack_optimizer(name, opt, snap)
        prefix = _rank_prefix(self.rt.rank)
        pools = {k[len(prefix):]: t for k, t in snap.tensors.items() if k.startswith(prefix + "pool.")}
        self.pool_A.unpack("A", pools, self.rt.device)
        self.pool_B.unpack("B", pools, self.rt.device)
        ckpt.restore_rng(snap)
        self.rt.load_scaler_state(ckpt.unpack_scalers(snap))
        self.progress = Progress(**snap.state["progress"])

    def save(self) -> None:
        """Called on every rank (it gathers their image pools); only rank 0 writes."""
        rank_pools = self.rt.gather_to_main(self._pool_tensors())
        if not self.is_main:
            return
        ckpt.save_checkpoint(self.run_dir, self.progress.step, self.snapshot(rank_pools),
                             keep=self.r.train.keep_checkpoints)
        self.export_generators()

    def export_generators(self) -> None:
        """student.safetensors / teacher.safetensors at the run root: what profile/export/bench read."""
        teacher = self.best_G_A if self.best_G_A is not None else self.G_A
        meta = {"recipe": self.r.name, "step": str(self.progress.step)}
        save_generator(self.student, self.run_dir / "student.safetensors", meta)
        save_generator(teacher, self.run_dir / "teacher.safetensors", meta)

    # ------------------------------------------------------------------ logging / eval
    def _log(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {"step": self.progress.step, "student_step": self.progress.student_steps, "time": time.time(), **row}
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def evaluate(self) -> dict[str, Any]:
        teacher = self.best_G_A if self.best_G_A is not None else self.G_A
        fid, t_out, s_out = evaluate_student(self.student, teacher, self.eval_inputs)
        row = {"kind": "eval", **fid.to_dict()}
        if self.crd is not None:  # the relational distance the student is trained to close
            with torch.no_grad():
                row["crd"] = float(self.crd(s_out, t_out))
        if self.is_main:
            grid = self.run_dir / "samples" / f"step-{self.progress.step:08d}.png"
            save_grid(grid, [self.eval_inputs, t_out, s_out])
            row["grid"] = str(grid.relative_to(self.run_dir))
        row = self._log(row)
        if self._first_eval is None:
            self._first_eval = row
        self._last_eval = row
        return row

    def _track(self, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self._running[k] = self._running.get(k, 0.0) + v
        self._running_n += 1
        if self.progress.step % LOG_EVERY == 0 and self._running_n:
            self._log({"kind": "train", **{k: v / self._running_n for k, v in self._running.items()}})
            self._running, self._running_n = {}, 0

    # ------------------------------------------------------------------ main loop
    def total_steps(self) -> int:
        per_epoch = self._epoch_len()
        return sum(ph.epochs * per_epoch for ph in self.phases)  # a joint step is one step

    def _handle_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def run(self, resume: bool = False) -> DistillResult:
        start = time.time()
        self._prepare_run_dir(resume)
        resumed_from = self.progress.step if resume else None
        if resume and self.finished():
            return DistillResult(self.run_dir, self.run_dir / "student.safetensors",
                                 self.run_dir / "teacher.safetensors", self.progress.step, self.progress.student_steps,
                                 None, None, already_finished=True, resumed_from=resumed_from)
        handlers = {}
        try:
            import threading

            if threading.current_thread() is threading.main_thread():
                for s in (signal.SIGINT, signal.SIGTERM):
                    handlers[s] = signal.signal(s, self._handle_signal)
        except ValueError:
            pass
        try:
            interrupted = self._loop()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        return DistillResult(self.run_dir, self.run_dir / "student.safetensors", self.run_dir / "teacher.safetensors",
                             self.progress.step, self.progress.student_steps, self._last_eval, self._first_eval,
                             interrupted, time.time() - start, resumed_from=resumed_from)

    def finished(self) -> bool:
        """Nothing left to do: the schedule is complete, or ``train.max_steps`` student steps are done."""
        p, cap = self.progress, self.r.train.max_steps
        return p.phase >= len(self.phases) or (cap is not None and p.student_steps >= cap)

    def _prepare_run_dir(self, resume: bool) -> None:
        ensure_writable_dir(self.run_dir)
        last = ckpt.latest_checkpoint(self.run_dir)
        if resume:
            if last is None:
                raise CrdError(f"nothing to resume in {self.run_dir} (no checkpoints/latest.json)")
            self.restore(last)
            if self.finished():  # resuming a finished run changes nothing, not even its recipe.toml
                return
        elif last is not None:
            raise CrdError(f"{self.run_dir} already holds a run (checkpoint {last.name}); pass --resume to continue it "
                           f"or choose another output_dir")
        if self.is_main:
            write_bytes_atomic(self.run_dir / "recipe.toml", self.r.to_toml().encode())

    def _loop(self) -> bool:
        p, t = self.progress, self.r.train
        if p.step == 0 and p.phase == 0 and p.batch_in_epoch == 0 and p.epoch_in_phase == 0:
            self.evaluate()
        last_ckpt_step = p.step
        if t.max_steps is not None and p.student_steps >= t.max_steps:
            return False
        while p.phase < len(self.phases):
            phase = self.phases[p.phase]
            while p.epoch_in_phase < phase.epochs:
                self._set_lrs(phase)
                epoch = p.teacher_epoch if phase.kind != "student" else p.student_epoch
                for batch in self._batches(phase.kind, epoch, p.batch_in_epoch):
                    if phase.kind == "teacher":
                        losses = self.cyclegan_teacher_step(batch)
                    elif phase.kind == "joint":
                        losses = self.pix2pix_joint_step(batch)
                    else:
                        losses = self.student_step(batch)
                    p.batch_in_epoch += 1
                    p.step += 1
                    self._track(losses)
                    self.on_progress({"phase": phase.kind, "step": p.step, "losses": losses})
                    is_student = phase.kind != "teacher"
                    if is_student and p.student_steps % t.eval_every == 0:
                        self.evaluate()
                    done = t.max_steps is not None and p.student_steps >= t.max_steps
                    # a signal may reach the ranks at different steps: stop together, or the collectives hang
                    stop = self.rt.any_rank(self._stop_signal is not None)
                    if done or stop:
                        if p.batch_in_epoch >= self._epoch_len():
                            self._end_epoch(phase)
                        self.save()
                        if done and self._last_eval_step() != p.step:
                            self.evaluate()
                        return stop
                    if p.step - last_ckpt_step >= t.checkpoint_every:
                        self.save()
                        last_ckpt_step = p.step
                self._end_epoch(phase)
            if phase.kind == "teacher":
                self._select_teacher()
            p.phase += 1
            p.epoch_in_phase = 0
            self.save()
            last_ckpt_step = p.step
        if self._last_eval_step() != p.step:
            self.evaluate()
        self.save()
        return False

    def _end_epoch(self, phase: Phase) -> None:
        p = self.progress
        p.batch_in_epoch = 0
        p.epoch_in_phase += 1
        if phase.kind in ("teacher", "joint"):
            p.teacher_epoch += 1
        if phase.kind in ("student", "joint"):
            p.student_epoch += 1

    def _last_eval_step(self) -> int | None:
        return None if self._last_eval is None else self._last_eval["step"]
