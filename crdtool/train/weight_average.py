"""An exponential moving average of the student's weights, started part-way through a run.

A GAN term keeps the student's weights moving to the last step, so the last weights are one sample of
that motion; their average over the final steps is the steadier model (BasicSR and Real-ESRGAN ship
``params_ema`` for this reason). Averaging starts at ``start_step``: the random initialisation and
the early steps would otherwise stay in a short run's average. The averaging itself is torch's
``AveragedModel`` with its EMA function.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from crdtool.models.checkpoints import save_generator
from crdtool.train import state as ckpt

PREFIX = "student_average"  # the average's weights in a checkpoint
UPDATES_KEY = "student_average_updates"


class WeightAverage:
    """``update(model, step)`` after each optimiser step; ``model`` is the averaged copy (None before
    ``start_step``). Buffers are averaged as well, so a model with running statistics stays consistent."""

    def __init__(self, decay: float, start_step: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an EMA decay must lie in (0, 1), not {decay}")
        self.decay, self.start_step = decay, start_step
        self._averaged: AveragedModel | None = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the weights after optimiser step ``step`` (0-based) into the average."""
        if step < self.start_step:
            return
        if self._averaged is None:  # the first update copies the weights (AveragedModel's n_averaged == 0)
            self._averaged = self._wrap(model)
        self._averaged.update_parameters(model)

    @property
    def model(self) -> nn.Module | None:
        return None if self._averaged is None else self._averaged.module

    @property
    def updates(self) -> int:
        return 0 if self._averaged is None else int(self._averaged.n_averaged)

    def pack(self, snap: ckpt.Snapshot) -> None:
        """Put the average (once started) into a checkpoint: its weights and how many updates it holds."""
        if self._averaged is not None:
            ckpt.module_weights(PREFIX, self._averaged.module, snap)
            snap.state[UPDATES_KEY] = self.updates

    def unpack(self, model: nn.Module, snap: ckpt.Snapshot, source: Path) -> None:
        """Take the average back from a checkpoint, around a copy of ``model``; one without it leaves none."""
        self._averaged = None
        if UPDATES_KEY in snap.state:
            self._averaged = self._wrap(model)
            ckpt.load_module_weights(PREFIX, self._averaged.module, snap, source)
            self._averaged.n_averaged.fill_(snap.state[UPDATES_KEY])

    def _wrap(self, model: nn.Module) -> AveragedModel:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)


def average_for(train, total_student_steps: int) -> WeightAverage | None:
    """The recipe's average (``train.ema_decay``, from ``train.ema_start`` of the scheduled student steps),
    or None when it is off."""
    if train.ema_decay <= 0:
        return None
    return WeightAverage(train.ema_decay, start_step=int(train.ema_start * total_student_steps))


def exported(student: nn.Module, average: WeightAverage | None) -> nn.Module:
    """The student a run evaluates and writes: its weight average once that has started, else itself."""
    return average.model if average is not None and average.model is not None else student


def save_student_files(student: nn.Module, average: WeightAverage | None, run_dir: Path,
                       meta: dict[str, str]) -> None:
    """``student.safetensors`` (the average once started) and, with an average, ``student-raw.safetensors``."""
    if average is not None and average.model is not None:
        save_generator(student, run_dir / "student-raw.safetensors", {**meta, "weights": "the last step's"})
        meta = {**meta, "weights": f"EMA of {average.updates} steps, decay {average.decay}"}
    save_generator(exported(student, average), run_dir / "student.safetensors", meta)
