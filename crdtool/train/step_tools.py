"""What every step strategy of the loop shares: its collaborators, and the guard against non-finite losses.

A step strategy (``cyclegan_step``, ``pix2pix_step``, ``student_step``) is one training update of one
task, called with a batch and returning its loss terms as floats ({} for a skipped update).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crdtool.errors import CrdError
from crdtool.runtime import Runtime
from crdtool.train import state as ckpt
from crdtool.train.criteria import Criteria
from crdtool.train.networks import Networks, Optimizers
from crdtool.train.schedule import Progress


@dataclass
class NonfiniteGuard:
    """train.nonfinite: "stop" raises with the last good checkpoint, "skip" drops the update and counts it."""

    policy: str
    run_dir: Path
    progress: Progress

    def ok(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], opts: list) -> bool:
        if torch.isfinite(loss).item():
            return True
        p = self.progress
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        if self.policy == "skip":
            for o in opts:
                if o is not None:
                    o.zero_grad(set_to_none=True)
            p.skipped_steps += 1
            return False
        last = ckpt.latest_checkpoint(self.run_dir)
        raise CrdError(f"non-finite loss at step {p.step + 1} ({detail}); stopped. Last good checkpoint: "
                       f"{last if last else 'none yet'} (train.nonfinite = \"skip\" skips such steps instead)")


@dataclass
class StepContext:
    """The collaborators of every step strategy: one set per run, shared, never copied."""

    rt: Runtime
    nets: Networks
    opts: Optimizers
    criteria: Criteria
    progress: Progress
    guard: NonfiniteGuard
    loss: Any  # the recipe's [loss] section

    def update(self, opt: torch.optim.Optimizer | None, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> bool:
        """Step ``opt`` on ``loss`` unless it is non-finite (see ``NonfiniteGuard``); True if it stepped."""
        if not self.guard.ok(loss, terms, [opt]):
            return False
        self.opts.step(opt, loss)
        return True


def as_floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}
