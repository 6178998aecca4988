"""The distillation loop: online teacher (CycleGAN or Pix2Pix) or pretrained teacher -> CRD student.

Schedules (docs/method.md; ``train.schedule``):
- CycleGAN, online teacher: rounds of ``round_epochs`` teacher epochs followed by
  ``student_epochs_per_round`` student epochs distilled from the best A->B teacher so far.
- Pix2Pix, online teacher: teacher, discriminator and student stepped together every iteration
  (the student learns from the teacher's pre-update output).
- Pretrained teacher: student epochs only; the online discriminator (if used) keeps learning real vs
  teacher output in every step and is frozen for the student's term.

The ``Distiller`` walks the schedule and calls one step strategy per phase kind (``cyclegan_step``,
``pix2pix_step``, ``student_step``); it owns the order of things (steps, evaluations, checkpoints,
stops), not their content. Everything random is a pure function of (seed, epoch, index) or lives in
saved generator state, so a run resumed from any checkpoint ends with exactly the weights of an
uninterrupted run (CPU).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from crdtool.errors import CrdError
from crdtool.fileio import ensure_writable_dir, write_bytes_atomic
from crdtool.recipe import Recipe
from crdtool.runtime import Runtime
from crdtool.train import state as ckpt
from crdtool.train.build import build_run
from crdtool.train.checkpointing import RunCheckpoints
from crdtool.train.evaluate import StudentEvaluation
from crdtool.train.result import DistillResult
from crdtool.train.run_log import RunLog
from crdtool.train.schedule import STUDENT_EPOCH_KEY, Phase
from crdtool.train.teacher_select import Scorer, TeacherScorer, keep_best_teacher


class StopSignals:
    """SIGINT/SIGTERM ask the run to stop after the current step and checkpoint (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        try:
            if threading.current_thread() is threading.main_thread():
                for s in (signal.SIGINT, signal.SIGTERM):
                    self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not allowed here (e.g. an embedded interpreter): run without a graceful stop
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum


def _network(name: str) -> property:
    return property(lambda self: getattr(self.nets, name), doc=f"``nets.{name}``")


class Distiller:
    """One run: ``run()`` trains to the end of its schedule, to ``train.max_steps`` or to a stop signal.

    ``runtime`` decides device, precision, ranks and threads (default: the recipe's [train]);
    ``teacher_scorer`` scores online CycleGAN teachers for train.teacher_select = "fid" (default: FID on
    the test split); ``on_progress`` receives one "step" event per step.
    """

    G_A, G_B, student, D_A, D_B, best_G_A = map(_network, ("G_A", "G_B", "student", "D_A", "D_B", "best_G_A"))

    def __init__(self, recipe: Recipe, runtime: Runtime | None = None, run_dir: Path | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None, teacher_scorer: Scorer | None = None):
        self.r = recipe
        self.rt = runtime or Runtime.for_training(recipe.train)
        self.rt.setup()  # threads, this rank's GPU, the process group
        self.run_dir = Path(run_dir or recipe.run_dir)
        self.on_progress = on_progress or (lambda info: None)
        self.rank, self.world, self.is_main = self.rt.rank, self.rt.world_size, self.rt.is_main
        parts = build_run(recipe, self.rt, self.run_dir)
        self.schedule, self.progress, self.nets, self.opts = parts.schedule, parts.progress, parts.nets, parts.opts
        self.criteria, self.steps, self.notes = parts.criteria, parts.steps, parts.notes
        self.train_set, self.test_set, self.eval_inputs = parts.train_set, parts.test_set, parts.eval_inputs
        self.teacher_cache, self.d_real = parts.teacher_cache, parts.d_real
        self.pretrained = self.schedule.kind == "pretrained"
        self.log = RunLog(self.run_dir, self.progress, self.is_main)
        self.evaluate = StudentEvaluation(self.nets, self.criteria.crd, self.eval_inputs, self.log.write, self.run_dir,
                                          self.progress, self.is_main)
        self.checkpoints = RunCheckpoints(recipe, self.run_dir, self.rt, self.nets, self.opts, parts.pools,
                                          self.progress, self.pretrained)
        self.teacher_scorer: Scorer | None = None  # None: distil from the last online teacher
        if self.schedule.kind == "cyclegan" and recipe.train.teacher_select == "fid":
            self.teacher_scorer = teacher_scorer or TeacherScorer.for_recipe(recipe, self.run_dir)

    # the parts under their usual names (the step strategies hold the parts themselves)
    fwd = property(lambda self: self.nets.fwd)
    gan = property(lambda self: self.criteria.gan)
    perceptual = property(lambda self: self.criteria.perceptual)

    def student_step(self, batch: dict[str, torch.Tensor], teacher_out: torch.Tensor | None = None) -> dict[str, float]:
        return self.steps["student"](batch, teacher_out)

    def total_steps(self) -> int:
        return self.schedule.total_steps

    def describe(self) -> dict[str, Any]:
        """The "start" event: what runs where from which step, for a header above the progress."""
        spec = getattr(self.nets.G_A, "spec", None) or self.r.teacher.spec()  # a checkpoint describes itself
        layout = getattr(self.nets.G_A, "checkpoint_layout", None)
        notes = ([f"teacher checkpoint: {layout}"] if layout else []) + self.notes
        return {"event": "start", "rank": self.rank, "step": self.progress.step,
                "total": self.schedule.planned_steps(), "name": self.r.name,
                "teacher": f"{spec.describe()} ({'pretrained' if self.pretrained else 'online'})",
                "student": self.r.student.spec().describe(), "device": self.rt.describe(),
                "run_dir": str(self.run_dir), "notes": notes}

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False,
            on_start: Callable[[dict[str, Any]], None] | None = None) -> DistillResult:
        """``on_start`` gets ``describe()`` once the run folder is ready (and a resumed run restored)."""
        start = time.time()
        self._prepare_run_dir(resume)
        resumed_from = self.progress.step if resume else None
        if on_start is not None:
            on_start(self.describe())
        if resume and self.schedule.finished(self.progress):
            return self._result(False, 0.0, resumed_from, already_finished=True)
        with StopSignals() as stop:
            interrupted = self._loop(stop)
        return self._result(interrupted, time.time() - start, resumed_from)

    def _result(self, interrupted: bool, seconds: float, resumed_from: int | None,
                already_finished: bool = False) -> DistillResult:
        ev = self.evaluate
        first, last = (None, None) if already_finished else (ev.first, ev.last)
        return DistillResult(self.run_dir, self.run_dir / "student.safetensors", self.run_dir / "teacher.safetensors",
                             self.progress.step, self.progress.student_steps, last, first, interrupted, seconds,
                             already_finished, resumed_from, self.rank)

    def _prepare_run_dir(self, resume: bool) -> None:
        ensure_writable_dir(self.run_dir)
        last = ckpt.latest_checkpoint(self.run_dir)
        if resume:
            if last is None:
                raise CrdError(f"nothing to resume in {self.run_dir} (no checkpoints/latest.json)")
            self.checkpoints.restore(last)
            if self.schedule.finished(self.progress):  # resuming a finished run changes nothing, not even its recipe
                return
        elif last is not None:
            raise CrdError(f"{self.run_dir} already holds a run (checkpoint {last.name}); pass --resume to continue it "
                           f"or choose another output_dir")
        if self.is_main:
            write_bytes_atomic(self.run_dir / "recipe.toml", self.r.to_toml().encode())

    def _batches(self, kind: str, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of one epoch in a (seed, kind, epoch)-determined order, from batch ``start`` on."""
        from crdtool.data import make_loader

        d = self.r.data
        key = epoch if kind != "student" else STUDENT_EPOCH_KEY + epoch  # student epochs draw other crops/orders
        yield from make_loader(self.train_set, d.batch_size, shuffle=True, seed=self.r.seed, epoch=key,
                               num_workers=d.num_workers, skip_batches=start, pin_memory=self.rt.is_cuda,
                               rank=self.rt.rank, world_size=self.rt.world_size)

    def _loop(self, stop: StopSignals) -> bool:
        """Train from ``progress`` on; True if a signal stopped the run (after a checkpoint)."""
        p, sched = self.progress, self.schedule
        if p.at_start:
            self.evaluate()
        last_ckpt_step = p.step
        if sched.cap_reached(p):
            return False
        while p.phase < len(sched.phases):
            phase = sched.phases[p.phase]
            if phase.kind == "student" and self.teacher_cache is not None:
                self.teacher_cache.use(self.nets.teacher)  # this round's teacher (it changes between rounds)
            while p.epoch_in_phase < phase.epochs:
                self.opts.set_lrs(*sched.learning_rates(phase, p))
                for batch in self._batches(phase.kind, p.epoch_of(phase), p.batch_in_epoch):
                    self._step(phase, batch)
                    done = sched.cap_reached(p)
                    # a signal may reach the ranks at different steps: stop together, or the collectives hang
                    stopped = self.rt.any_rank(stop.received is not None)
                    if done or stopped:
                        self._stop_early(phase, done)
                        return stopped
                    if p.step - last_ckpt_step >= self.r.train.checkpoint_every:
                        self.checkpoints.save()
                        last_ckpt_step = p.step
                p.end_epoch(phase)
            if phase.kind == "teacher" and self.teacher_scorer is not None:
                keep_best_teacher(self.nets, self.teacher_scorer, p.best_fid, self.log.write)
            p.phase += 1
            p.epoch_in_phase = 0
            self.checkpoints.save()
            last_ckpt_step = p.step
        if self.evaluate.last_step != p.step:
            self.evaluate()
        self.checkpoints.save()
        return False

    def _step(self, phase: Phase, batch: dict[str, torch.Tensor]) -> None:
        p = self.progress
        losses = self.steps[phase.kind](batch)
        p.batch_in_epoch += 1
        p.step += 1
        self.log.track(losses)
        self.on_progress({"event": "step", "phase": phase.kind, "step": p.step, "losses": losses})
        if phase.trains_student and p.student_steps % self.r.train.eval_every == 0:
            self.evaluate()

    def _stop_early(self, phase: Phase, cap_reached: bool) -> None:
        """Checkpoint where the run stops (and evaluate, if it reached train.max_steps)."""
        p = self.progress
        if p.batch_in_epoch >= self.schedule.epoch_len:
            p.end_epoch(phase)
        self.checkpoints.save()
        if cap_reached and self.evaluate.last_step != p.step:
            self.evaluate()
