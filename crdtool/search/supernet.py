"""The AGD supernet: softmax-mixed cell operators, Gumbel-sampled widths, differentiable expected MACs.

- Each body cell outputs ``sum_o softmax(alpha)_o * op_o(x)`` over all candidate operators.
- Each searchable width (3 stem, one per cell, 2 head) is a one-hot sample from a hard straight-through
  Gumbel-softmax over its choices: the forward pass uses exactly one width (a channel mask keeping the
  first ``w`` channels of the widest layer), the backward pass gets the soft sample's gradient.
- Weight steps follow AGD's sandwich rule (``sandwich_widths``): each step trains the Gumbel-sampled
  widths plus the all-widest and all-narrowest networks; pretraining trains widest, narrowest and two
  uniformly random width draws. The narrow and wide ends of the supernet are thus always trained, not
  only the widths the logits currently favour.
- Expected MACs are exact under the sampling distributions: positions are independent, so each layer's
  expected cost is ``q_in^T T q_out`` for its lookup table ``T`` (``space.py``'s MAC formulas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.models.searchable_ops import head_layers, make_op, stem_layers
from crdtool.search.space import SearchSpace, arch_macs, head_macs, op_macs, stem_macs


def gumbel_hard(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """One-hot sample in the forward pass, the soft Gumbel-softmax gradient in the backward pass."""
    gumbels = -torch.empty_like(logits).exponential_().log()
    soft = F.softmax((logits + gumbels) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def width_masks(choices: list[int], scale: int = 1) -> torch.Tensor:
    """(K, scale*max) binary matrix: row k keeps the first ``scale * choices[k]`` channels."""
    m = torch.zeros(len(choices), scale * max(choices))
    for k, w in enumerate(choices):
        m[k, : scale * w] = 1.0
    return m


class MixedCell(nn.Module):
    """All candidate operators at the widest width; the output is their softmax(alpha)-weighted sum."""

    def __init__(self, ops: tuple[str, ...], c_in: int, c_out: int, expand: int):
        super().__init__()
        self.ops = nn.ModuleDict({name: make_op(name, c_in, c_out, expand) for name in ops})

    def forward(self, x, op_weights, mask, hidden_mask):
        out = None
        for w, op in zip(op_weights, self.ops.values()):
            y = w * op(x, mask, hidden_mask)
            out = y if out is None else out + y
        return out


class Supernet(nn.Module):
    """Weights (``weight_parameters``) and architecture logits (``arch_parameters``) of one search space."""

    stride = 4

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        pos = space.positions
        self.n_stem, self.n_cells = 3, space.n_cells
        self.stem = stem_layers(space.input_nc, [max(c) for c in pos[:3]])
        c_cell = max(space.cell_choices)
        self.cells = nn.ModuleList(MixedCell(space.ops, max(pos[2 + i]), c_cell, space.expand)
                                   for i in range(space.n_cells))
        head_ch = [max(c) for c in pos[3 + space.n_cells:]]
        self.head, self.final = head_layers(c_cell, head_ch, space.output_nc)
        # architecture parameters: 1e-3 * N(0, 1). AGD starts from 1e-3 * ones; both give (near-)uniform
        # distributions, but with equal logits every argmax is a tie broken towards index 0, so AGD's first
        # derived network is the all-narrowest one with every cell's first candidate op. The tiny noise (deliberate)
        # makes it a random draw instead, which the budget controller's first check then judges fairly.
        self.op_logits = nn.Parameter(1e-3 * torch.randn(space.n_cells, len(space.ops)))
        self.width_logits = nn.ParameterList(nn.Parameter(1e-3 * torch.randn(len(c))) for c in pos)
        for i, c in enumerate(pos):
            self.register_buffer(f"mask{i}", width_masks(c), persistent=False)
        for i in range(space.n_cells):
            self.register_buffer(f"hmask{i}", width_masks(pos[3 + i], space.expand), persistent=False)

    # -- parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.op_logits, *self.width_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- forward
    def sample_widths(self, tau: float = 1.0, hard_argmax: bool = False) -> list[torch.Tensor]:
        """One (straight-through) one-hot per position; ``hard_argmax`` takes the most likely width."""
        if hard_argmax:
            return [F.one_hot(p.argmax(), p.numel()).to(p.dtype) for p in self.width_logits]
        return [gumbel_hard(p, tau) for p in self.width_logits]

    def fixed_widths(self, mode: Literal["max", "min", "random"]) -> list[torch.Tensor]:
        """One-hots picking every position's widest, narrowest or a uniformly random width (torch RNG)."""
        out = []
        for p in self.width_logits:
            k = p.numel()
            idx = {"max": k - 1, "min": 0}.get(mode)
            if idx is None:
                idx = int(torch.randint(k, ()))
            out.append(F.one_hot(torch.tensor(idx, device=p.device), k).to(p.dtype))
        return out

    def sandwich_widths(self, pretrain: bool, tau: float = 1.0) -> list[list[torch.Tensor]]:
        """The width draws one weight step trains, as AGD's sandwich rule.

        Search: the Gumbel sample, widest, narrowest. Pretraining (no architecture signal yet): widest,
        narrowest and two random draws. A space with a single width everywhere trains its one network.
        """
        if all(p.numel() == 1 for p in self.width_logits):
            return [self.fixed_widths("max")]
        if pretrain:
            return [self.fixed_widths("max"), self.fixed_widths("min"),
                    self.fixed_widths("random"), self.fixed_widths("random")]
        return [self.sample_widths(tau), self.fixed_widths("max"), self.fixed_widths("min")]

    def forward(self, x: torch.Tensor, tau: float = 1.0, onehots: list[torch.Tensor] | None = None) -> torch.Tensor:
        g = self.sample_widths(tau) if onehots is None else onehots
        masks = [g[i] @ getattr(self, f"mask{i}") for i in range(len(g))]
        for i, layer in enumerate(self.stem):
            x = layer(x, masks[i])
        op_w = F.softmax(self.op_logits, dim=-1)
        for i, cell in enumerate(self.cells):
            hidden = g[3 + i] @ getattr(self, f"hmask{i}")
            x = cell(x, op_w[i], masks[3 + i], hidden)
        for j, layer in enumerate(self.head):
            x = layer(x, masks[3 + self.n_cells + j])
        return self.final(x)

    # -- cost
    def mac_tables(self, size: int | tuple[int, int]) -> "MacTables":
        return MacTables.build(self.space, size, self.op_logits.device)

    def expected_macs(self, tables: "MacTables") -> torch.Tensor:
        """E[MACs] under softmax(op_logits) and softmax(width_logits): differentiable in both."""
        dt = tables.stem[0].dtype
        q = [F.softmax(p.to(dt), dim=-1) for p in self.width_logits]
        p_op = F.softmax(self.op_logits.to(dt), dim=-1)
        total = q[0] @ tables.stem[0]  # input channels fixed
        for i in (1, 2):
            total = total + q[i - 1] @ tables.stem[i] @ q[i]
        for i in range(self.n_cells):
            t = torch.einsum("o,oab->ab", p_op[i], tables.cells[i])
            total = total + q[2 + i] @ t @ q[3 + i]
        k = 3 + self.n_cells
        total = total + q[k - 1] @ tables.head[0] @ q[k] + q[k] @ tables.head[1] @ q[k + 1]
        return total + q[k + 1] @ tables.head[2]

    def argmax_arch(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """The derived network: argmax operator per cell, argmax width per position."""
        pos = self.space.positions
        widths = [c[int(p.argmax())] for c, p in zip(pos, self.width_logits)]
        ops = [self.space.ops[int(i)] for i in self.op_logits.argmax(-1)]
        return self.space.make_arch(widths, ops, meta)

    def choice_indices(self) -> tuple[list[int], list[int]]:
        return ([int(i) for i in self.op_logits.argmax(-1)], [int(p.argmax()) for p in self.width_logits])

    def derived_prefix_map(self, arch: dict[str, Any]) -> dict[str, str]:
        """Key prefixes from a derived ``SearchedGenerator`` to this supernet, for ``inherit_weights``."""
        return {f"cells.{i}.": f"cells.{i}.ops.{c['op']}." for i, c in enumerate(arch["cells"])}


@dataclass
class MacTables:
    """Per-layer MAC lookup tables over (input width choice, output width choice)."""

    stem: list[torch.Tensor]  # [K0], [K0,K1], [K1,K2]
    cells: list[torch.Tensor]  # [n_ops, K_in, K_out] per cell
    head: list[torch.Tensor]  # [K_last, H0], [H0, H1], [H1]

    @classmethod
    def build(cls, space: SearchSpace, size: int | tuple[int, int], device: torch.device | str = "cpu") -> "MacTables":
        h, w = (size, size) if isinstance(size, int) else size
        pos = space.positions
        t = lambda rows: torch.tensor(rows, dtype=torch.float64, device=device)  # noqa: E731
        stem = [t([stem_macs(0, space.input_nc, b, h, w) for b in pos[0]])]
        for i in (1, 2):
            stem.append(t([[stem_macs(i, a, b, h, w) for b in pos[i]] for a in pos[i - 1]]))
        cells = []
        for i in range(space.n_cells):
            cin, cout = pos[2 + i], pos[3 + i]
            cells.append(t([[[op_macs(o, a, b, h // 4, w // 4, space.expand) for b in cout] for a in cin]
                            for o in space.ops]))
        k = 3 + space.n_cells
        head = [t([[head_macs(0, a, b, h, w) for b in pos[k]] for a in pos[k - 1]]),
                t([[head_macs(1, a, b, h, w) for b in pos[k + 1]] for a in pos[k]]),
                t([head_macs(2, a, space.output_nc, h, w) for a in pos[k + 1]])]
        return cls(stem, cells, head)

    def to(self, dtype: torch.dtype) -> "MacTables":
        return MacTables([x.to(dtype) for x in self.stem], [x.to(dtype) for x in self.cells],
                         [x.to(dtype) for x in self.head])


def space_extremes(space: SearchSpace, size: int) -> tuple[float, float]:
    """(cheapest, most expensive) network MACs the space can produce, for budget sanity checks.

    Every operator's cost grows with both widths, so the extremes take all-narrowest / all-widest widths
    and, per cell, the cheapest / dearest operator at those widths.
    """
    pos = space.positions
    out = []
    for pick, best in ((lambda c: c[0], min), (lambda c: c[-1], max)):
        widths = [pick(c) for c in pos]
        ops = [best(space.ops, key=lambda o, i=i: op_macs(o, widths[2 + i], widths[3 + i], 4, 4, space.expand))
               for i in range(space.n_cells)]
        out.append(float(arch_macs(space.make_arch(widths, ops), size)["total"]))
    return out[0], out[1]


class BudgetController:
    """AGD's lambda rule: halve lambda while the derived network is under the window, double it above.

    lambda stays within ``2**-span .. 2**span`` times its initial value: an unbounded run of halvings
    (a long stretch under the window) would otherwise take as many doublings to undo.
    """

    def __init__(self, budget_min: float, budget_max: float, lam: float = 1.0, span: int = 12):
        if not 0 < budget_min <= budget_max:
            raise ValueError(f"bad budget window [{budget_min}, {budget_max}]")
        self.budget_min, self.budget_max, self.lam = float(budget_min), float(budget_max), float(lam)
        self.lam_min, self.lam_max = lam * 2.0**-span, lam * 2.0**span

    def inside(self, macs: float) -> bool:
        return self.budget_min <= macs <= self.budget_max

    def update(self, macs: float) -> float:
        if macs < self.budget_min:
            self.lam = max(self.lam_min, self.lam / 2)
        elif macs > self.budget_max:
            self.lam = min(self.lam_max, self.lam * 2)
        return self.lam

    def state_dict(self) -> dict[str, float]:
        return {"budget_min": self.budget_min, "budget_max": self.budget_max, "lam": self.lam}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.lam = float(state["lam"])


def repair_to_window(supernet: Supernet, size: int, budget_min: float, budget_max: float,
                     max_moves: int = 200) -> tuple[dict[str, Any], int]:
    """Greedy fallback when the argmax network is outside the window: change one choice at a time (an
    operator or one width step), each time the move that loses the least log-probability per MAC moved
    toward the window, never overshooting it when a non-overshooting move exists. Returns (arch, moves)."""
    space = supernet.space
    pos = space.positions
    op_idx, w_idx = supernet.choice_indices()
    logp_op = F.log_softmax(supernet.op_logits.detach().float(), -1)
    logp_w = [F.log_softmax(p.detach().float(), -1) for p in supernet.width_logits]

    def macs(oi, wi):
        return arch_macs(space.make_arch([c[j] for c, j in zip(pos, wi)], [space.ops[j] for j in oi]), size)["total"]

    cur = macs(op_idx, w_idx)
    moves = 0
    while not (budget_min <= cur <= budget_max) and moves < max_moves:
        down = cur > budget_max
        cands = []
        for c in range(space.n_cells):
            for j in range(len(space.ops)):
                if j != op_idx[c]:
                    oi = op_idx.copy()
                    oi[c] = j
                    cands.append((oi, w_idx, float(logp_op[c, op_idx[c]] - logp_op[c, j])))
        for p in range(len(pos)):
            for j in (w_idx[p] - 1, w_idx[p] + 1):
                if 0 <= j < len(pos[p]):
                    wi = w_idx.copy()
                    wi[p] = j
                    cands.append((op_idx, wi, float(logp_w[p][w_idx[p]] - logp_w[p][j])))
        scored = []
        for oi, wi, cost in cands:
            m = macs(oi, wi)
            gain = (cur - m) if down else (m - cur)
            if gain <= 0:
                continue
            overshoot = (m < budget_min) if down else (m > budget_max)
            scored.append((overshoot, max(cost, 0.0) / gain, oi, wi, m))
        if not scored:
            break
        scored.sort(key=lambda s: (s[0], s[1]))
        _, _, op_idx, w_idx, cur = scored[0]
        moves += 1
    widths = [c[j] for c, j in zip(pos, w_idx)]
    return space.make_arch(widths, [space.ops[j] for j in op_idx]), moves
