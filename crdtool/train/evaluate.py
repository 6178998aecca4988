"""Periodic evaluation during distillation: student fidelity to the teacher, and image grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from crdtool.data.images import to_uint8
from crdtool.fileio import atomic_path
from crdtool.metrics.fidelity import Fidelity, fidelity
from crdtool.train.networks import Networks
from crdtool.train.schedule import Progress


@torch.no_grad()
def translate(model: torch.nn.Module, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Run ``model`` in eval mode over ``images`` in chunks; restores its train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = [model(images[i:i + batch].to(dev)).float().cpu() for i in range(0, images.shape[0], batch)]
    model.train(was_training)
    return torch.cat(outs, 0)


def evaluate_student(student: torch.nn.Module, teacher: torch.nn.Module,
                     inputs: torch.Tensor) -> tuple[Fidelity, torch.Tensor, torch.Tensor]:
    t = translate(teacher, inputs)
    s = translate(student, inputs)
    return fidelity(s, t), t, s


def save_grid(path: Path, columns: list[torch.Tensor], max_rows: int = 8) -> Path:
    """One row per input image: the given columns side by side (e.g. input | teacher | student)."""
    rows = []
    for i in range(min(max_rows, columns[0].shape[0])):
        rows.append(np.concatenate([to_uint8(c[i]) for c in columns], axis=1))
    grid = np.concatenate(rows, axis=0)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path


class StudentEvaluation:
    """The student's fidelity to its teacher on fixed test inputs, with a sample grid (rank 0 writes it).

    Called at the start, every train.eval_every student steps and at the end; ``first`` and ``last`` are
    the rows a run's summary shows.
    """

    def __init__(self, nets: Networks, crd: torch.nn.Module | None, inputs: torch.Tensor,
                 log: Callable[[dict[str, Any]], dict[str, Any]], run_dir: Path, progress: Progress, is_main: bool):
        self.nets, self.crd, self.inputs, self.log = nets, crd, inputs, log
        self.run_dir, self.progress, self.is_main = run_dir, progress, is_main
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None

    @property
    def last_step(self) -> int | None:
        return None if self.last is None else self.last["step"]

    def __call__(self) -> dict[str, Any]:
        fid, t_out, s_out = evaluate_student(self.nets.exported_student, self.nets.teacher, self.inputs)
        row = {"kind": "eval", **fid.to_dict()}
        if self.crd is not None:  # the relational distance the student is trained to close
            with torch.no_grad():
                row["crd"] = float(self.crd(s_out, t_out))
        if self.is_main:
            grid = self.run_dir / "samples" / f"step-{self.progress.step:08d}.png"
            save_grid(grid, [self.inputs, t_out, s_out])
            row["grid"] = str(grid.relative_to(self.run_dir))
        row = self.log(row)
        if self.first is None:
            self.first = row
        self.last = row
        return row
