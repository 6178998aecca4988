"""Periodic evaluation during distillation: student fidelity to the teacher, and image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from crdtool.data.images import to_uint8
from crdtool.fileio import atomic_path
from crdtool.metrics.fidelity import Fidelity, fidelity


@torch.no_grad()
def translate(model: torch.nn.Module, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Run ``model`` in eval mode over ``images`` in chunks; restores its train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = [model(images[i:i + batch].to(dev)).float().cpu() for i in range(0, images.shape[0], batch)]
    model.train(was_training)
    return torch.cat(outs, 0)


def evaluate_student(student: torch.nn.Module, teacher: torch.nn.Module, inputs: torch.Tensor) -> tuple[Fidelity, torch.Tensor, torch.Tensor]:
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
