"""An exponential moving average of the student's weights, started part-way through a run.

A GAN term keeps the student's weights moving to the last step, so the last weights are one sample of
that motion; their average over the final steps is the steadier model (BasicSR and Real-ESRGAN ship
``params_ema`` for this reason). Averaging starts at ``start_step``: the random initialisation and
the early steps would otherwise stay in a short run's average. The averaging itself is torch's
``AveragedModel`` with its EMA function.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from crdtool.tensorfiles import load_state_strict


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

    def restore(self, model: nn.Module, weights: dict[str, torch.Tensor], updates: int, source: str) -> None:
        """Take back an average saved as its model's ``weights`` after ``updates`` updates (a resumed run)."""
        self._averaged = self._wrap(model)
        load_state_strict(self._averaged.module, weights, source)
        self._averaged.n_averaged.fill_(updates)

    def _wrap(self, model: nn.Module) -> AveragedModel:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
