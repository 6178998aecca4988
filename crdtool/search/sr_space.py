"""AutoGAN-Distiller's super-resolution search, on crdtool's SR skeleton (``models.sr_student.SRNet``).

AGD_SR searches, per layer of an ESRGAN-like body, an operator among ``skip``, ``conv3x3``, ``conv3x3_d2``,
``conv3x3_d4``, ``residual`` and ``dwsblock`` (LeakyReLU 0.2, no norm) and a width multiplier, by
differentiable search (softmax over operators, Gumbel-softmax over widths) with a FLOPs term in the
architecture loss. crdtool does the same, with these departures:

- skeleton: every layer runs at LR resolution and the tail is a conv + pixel shuffle (``SRNet``); AGD keeps
  ESRGAN's two nearest-upsample convs and HR conv at 2x/4x resolution;
- cost: exact conv MACs at a 256x256 LR input (``sr_arch_macs`` == ``crdtool profile``'s exact count),
  penalised only above the budget (``lambda_budget * relu(E[MACs] / budget - 1)``), and the derived
  network repaired to fit (narrowest widths first) if the argmax does not;
- objective: L1 to the HR patch (PSNR-oriented), optionally plus L1 to a teacher's output; AGD distils
  from the ESRGAN teacher with a content + perceptual loss;
- in the supernet a ``skip`` between different widths is the masked identity; the derived network uses
  a 1x1 conv there (as AGD's ``SkipConnect``);
- weights and architecture parameters are updated alternately on two disjoint halves of the images.

The result is an ``sr_arch.json`` (``models.sr_student``) that ``distill`` (``student.arch``),
``profile``, ``export`` and ``bench`` accept.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.data.sr import SRPatches
from crdtool.errors import CrdError
from crdtool.models.sr_student import SR_OPS, make_sr_op, save_sr_arch, sr_arch_macs, sr_fixed_macs, sr_op_macs


@dataclass
class SRSearchConfig:
    data: Path  # folder holding the training sets
    train_sets: Sequence[str] = ("train/T91", "train/BSD200")
    budget: float = 110.9e9  # MACs at a size x size LR input
    size: int = 256
    scale: int = 4
    num_feat: int = 32
    cells: int = 10
    widths: Sequence[int] = (16, 32, 48)
    ops: Sequence[str] = SR_OPS
    steps: int = 300
    batch_size: int = 8
    crop_size: int = 96  # HR patch side
    lr: float = 5e-4
    arch_lr: float = 3e-3
    arch_every: int = 2  # one architecture step per this many weight steps
    lambda_budget: float = 1.0
    tau: float = 1.0
    seed: int = 0
    threads: int | None = None
    out_dir: Path = field(default_factory=lambda: Path("runs/sr-search"))


class _MixedCell(nn.Module):
    """All operators at the widest width; output = sum_o softmax(alpha)_o * op_o(x), times a width mask."""

    def __init__(self, ops: Sequence[str], c_in: int, c_out: int):
        super().__init__()
        self.ops = nn.ModuleList(make_sr_op(op, c_in, c_out) for op in ops)

    def forward(self, x: torch.Tensor, op_w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = sum(w * op(x) for w, op in zip(op_w, self.ops))
        return out * mask.view(1, -1, 1, 1)


class SRSupernet(nn.Module):
    def __init__(self, cfg: SRSearchConfig):
        super().__init__()
        self.cfg = cfg
        wmax = max(cfg.widths)
        self.conv_first = nn.Conv2d(3, cfg.num_feat, 3, padding=1)
        self.cells = nn.ModuleList(_MixedCell(cfg.ops, cfg.num_feat if i == 0 else wmax, wmax) for i in range(cfg.cells))
        self.conv_body = nn.Conv2d(wmax, cfg.num_feat, 3, padding=1)
        self.conv_up = nn.Conv2d(cfg.num_feat, 3 * cfg.scale ** 2, 3, padding=1)
        self.alpha = nn.Parameter(1e-3 * torch.randn(cfg.cells, len(cfg.ops)))
        self.beta = nn.Parameter(1e-3 * torch.randn(cfg.cells, len(cfg.widths)))
        masks = torch.zeros(len(cfg.widths), wmax)
        for k, w in enumerate(cfg.widths):
            masks[k, :w] = 1
        self.register_buffer("masks", masks)

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n not in ("alpha", "beta")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        h = feat
        op_w = F.softmax(self.alpha, dim=-1)
        width_w = F.gumbel_softmax(self.beta, tau=self.cfg.tau, hard=False, dim=-1)
        for i, cell in enumerate(self.cells):
            h = cell(h, op_w[i], width_w[i] @ self.masks)
        feat = feat + self.conv_body(h)
        base = F.interpolate(x, scale_factor=self.cfg.scale, mode="bilinear", align_corners=False)
        return base + F.pixel_shuffle(self.conv_up(feat), self.cfg.scale)

    def expected_macs(self) -> torch.Tensor:
        """E[MACs] at size x size: sum over cells, operators and (input width, output width) pairs."""
        cfg = self.cfg
        hw = cfg.size
        p_op = F.softmax(self.alpha, dim=-1)
        q = F.softmax(self.beta, dim=-1)
        total = torch.zeros((), dtype=torch.float64)
        prev = torch.ones(1, dtype=torch.float64)
        prev_widths = [cfg.num_feat]
        for i in range(cfg.cells):
            table = torch.tensor([[[sr_op_macs(op, ci, co, hw, hw) for co in cfg.widths] for ci in prev_widths]
                                  for op in cfg.ops], dtype=torch.float64)  # (ops, in, out)
            total = total + torch.einsum("o,i,k,oik->", p_op[i].double(), prev, q[i].double(), table)
            prev, prev_widths = q[i].double(), list(cfg.widths)
        fixed = torch.tensor([sr_fixed_macs(cfg.num_feat, w, cfg.scale, hw, hw) for w in cfg.widths], dtype=torch.float64)
        return total + (prev * fixed).sum()

    def derive(self, budget: float) -> dict[str, Any]:
        """Argmax operator and width per cell, then narrowed (largest cell first) until within ``budget``."""
        cfg = self.cfg
        ops = [cfg.ops[int(i)] for i in self.alpha.argmax(-1)]
        widx = [int(i) for i in self.beta.argmax(-1)]

        def arch() -> dict[str, Any]:
            return {"scale": cfg.scale, "num_feat": cfg.num_feat,
                    "cells": [{"op": o, "width": cfg.widths[k]} for o, k in zip(ops, widx)]}

        repaired = 0
        while sr_arch_macs(arch(), cfg.size, cfg.size) > budget:
            order = sorted(range(cfg.cells), key=lambda i: -cfg.widths[widx[i]])
            if widx[order[0]] == 0:
                raise CrdError(f"no network in this space fits {budget / 1e9:.2f}G MACs; lower the widths or cells")
            widx[order[0]] -= 1
            repaired += 1
        out = arch()
        out["meta"] = {"search": "agd-sr", "budget_macs": budget, "size": cfg.size, "repaired": repaired,
                       "macs": sr_arch_macs(out, cfg.size, cfg.size), "convention": "exact"}
        return out


def smallest_macs(cfg: SRSearchConfig) -> int:
    """Exact MACs of the cheapest network in the space at ``size`` x ``size`` (a shortest path over widths)."""
    hw = cfg.size
    best = {cfg.num_feat: 0}
    for _ in range(cfg.cells):
        best = {co: min(m + sr_op_macs(op, ci, co, hw, hw) for ci, m in best.items() for op in cfg.ops)
                for co in cfg.widths}
    return min(m + sr_fixed_macs(cfg.num_feat, w, cfg.scale, hw, hw) for w, m in best.items())


def run_sr_search(cfg: SRSearchConfig, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search, write ``out_dir/sr_arch.json`` and ``out_dir/search.jsonl``; returns the derived arch.

    ``on_progress`` receives ``{"step", "total", "l1"}`` (and the architecture terms on arch steps) per step.
    """
    lowest = smallest_macs(cfg)
    if lowest > cfg.budget:
        raise CrdError(f"no network in this space fits {cfg.budget / 1e9:.4g}G MACs at {cfg.size}x{cfg.size} (the "
                       f"smallest costs {lowest / 1e9:.4g}G); raise the budget or narrow the widths or cells")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = SRPatches([Path(cfg.data) / s for s in cfg.train_sets], cfg.scale, cfg.crop_size, cfg.seed)
    half = len(data) // 2
    if half < 1:
        raise CrdError("the SR search needs at least 2 training images (weights and architecture use disjoint halves)")
    net = SRSupernet(cfg)
    opt_w = torch.optim.Adam(net.weight_parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    opt_a = torch.optim.Adam([net.alpha, net.beta], lr=cfg.arch_lr, betas=(0.5, 0.999))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "search.jsonl", "w")
    t0 = time.time()
    for step in range(cfg.steps):
        lr_img, hr, where = _batch(data, step, cfg.batch_size, range(half))
        loss = F.l1_loss(net(lr_img), hr)
        opt_w.zero_grad(set_to_none=True)
        loss.backward()
        opt_w.step()
        row: dict[str, Any] = {"step": step + 1, "l1": float(loss.detach())}
        if (step + 1) % cfg.arch_every == 0:
            lr_img, hr, _ = _batch(data, 10_000_000 + step, cfg.batch_size, range(half, len(data)))
            emacs = net.expected_macs()
            a_loss = F.l1_loss(net(lr_img), hr) + cfg.lambda_budget * F.relu(emacs / cfg.budget - 1).float()
            opt_a.zero_grad(set_to_none=True)
            a_loss.backward()
            opt_a.step()
            row.update(arch_loss=float(a_loss.detach()), expected_gmacs=float(emacs.detach()) / 1e9)
        if on_progress is not None:
            on_progress({**row, "total": cfg.steps})
        if (step + 1) % 20 == 0 or step + 1 == cfg.steps:
            log.write(json.dumps({**row, "seconds": round(time.time() - t0, 1)}) + "\n")
            log.flush()
    arch = net.derive(cfg.budget)
    arch["meta"].update(steps=cfg.steps, seconds=round(time.time() - t0, 1),
                        op_probs=[[round(p, 3) for p in r] for r in F.softmax(net.alpha, -1).tolist()],
                        width_probs=[[round(p, 3) for p in r] for r in F.softmax(net.beta, -1).tolist()],
                        space={"ops": list(cfg.ops), "widths": list(cfg.widths), "cells": cfg.cells,
                               "num_feat": cfg.num_feat})
    log.close()
    save_sr_arch(arch, out / "sr_arch.json")
    return arch


def _batch(data: SRPatches, step: int, batch_size: int, indices: range):
    """A batch drawn only from ``indices`` (the weight half or the architecture half of the images)."""
    import numpy as np

    rng = np.random.default_rng([data.seed, step, 7])
    picks = [indices[int(rng.integers(len(indices)))] for _ in range(batch_size)]
    lrs, hrs, where = [], [], []
    for j, i in enumerate(picks):
        one_lr, one_hr, w = _one(data, i, int(rng.integers(1 << 30)))
        lrs.append(one_lr)
        hrs.append(one_hr)
        where.append(w)
    return torch.stack(lrs), torch.stack(hrs), where


def _one(data: SRPatches, i: int, seed: int):
    import numpy as np

    from crdtool.data.sr import augment, to_tensor

    rng = np.random.default_rng(seed)
    hr, lr = data.pair(i)
    p = data.patch // data.scale
    top, left, aug = int(rng.integers(lr.shape[0] - p + 1)), int(rng.integers(lr.shape[1] - p + 1)), int(rng.integers(8))
    s = data.scale
    return (to_tensor(augment(lr[top:top + p, left:left + p], aug)),
            to_tensor(augment(hr[top * s:(top + p) * s, left * s:(left + p) * s], aug)), (i, top, left, aug))
