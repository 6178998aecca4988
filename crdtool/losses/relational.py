"""Relational knowledge distillation (RKD) and Content Relationship Distillation (CRD).

CRD cuts the student output S and the teacher output T into pieces (pixel rows, pixel columns,
p x p patches) and asks the student to reproduce the *relations* between the teacher's pieces:
their pairwise distances and the angles they form (RKD distance + 2 * RKD angle per granularity;
see docs/method.md, "Content Relationship Distillation").

Two implementations of the same numbers live here:

- ``*_literal``: the formulation as written (n x n x D difference tensors). Kept as the
  reference for tests and benchmarks; ~200 MB and tens of seconds for rows of a 256 px image.
- ``rkd_distance`` / ``rkd_angle``: the same values from the Gram matrix of the pieces. Every
  inner product of differences follows from pairwise squared distances (law of cosines),
  <x_j - x_i, x_k - x_i> = (d2_ij + d2_ik - d2_jk) / 2, so the D factor disappears. The n^3 angle
  part runs in chunks of anchors i with a hand-written gradient (no autograd graph of size n^3).

Degenerate pairs: a pair whose squared distance is at most ``1e-10 * (|x_i|^2 + |x_j|^2)`` (norms
of the pieces after subtracting their mean) counts as identical in BOTH implementations: its
distance is sqrt(1e-12) (the clamp) and its unit difference vector is 0 (as for j = i), both
without gradient. This is what makes the Gram path agree with the literal one on duplicated
pieces (flat image regions), where the Gram path's rounding would otherwise invent a direction.
The Gram matrix itself is computed in float64 (on devices without float64 in float32, with the
tolerance raised to 1e-5); everything else runs in float32, or float64 for float64 inputs.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from crdtool.errors import CrdError

EPS_SQ = 1e-12  # clamp under the square root, as in RKD
GRANULARITIES = ("rows", "columns", "patches")


# ----------------------------------------------------------------------------- shared helpers

def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _no_autocast(x: torch.Tensor):
    """Relations are numerically delicate: never let an outer autocast run them in bf16."""
    try:
        return torch.autocast(x.device.type, enabled=False)
    except RuntimeError:  # device type without autocast support
        return contextlib.nullcontext()


def _gram_dtype(device: torch.device) -> torch.dtype:
    """The Gram path cancels large terms (|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>), so it runs in float64
    (an O(n^2 D) matmul, cheap next to the O(n^3) angle part) where the device has float64."""
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def _identical_tol(device: torch.device) -> float:
    return 1e-10 if _gram_dtype(device) == torch.float64 else 1e-5


def _centered_sqnorms(x: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean(0, keepdim=True)
    return (xc * xc).sum(1)


def _identical(d2: torch.Tensor, sqnorm: torch.Tensor) -> torch.Tensor:
    """Mask of pairs treated as the same piece: the diagonal and (near-)duplicates."""
    tol = _identical_tol(d2.device)
    same = d2 <= tol * (sqnorm[:, None] + sqnorm[None, :])
    same.fill_diagonal_(True)
    return same


def _check_pair(xs: torch.Tensor, xt: torch.Tensor) -> None:
    if xs.dim() != 2 or xs.shape != xt.shape:
        raise ValueError(f"RKD needs two (n, D) matrices of the same shape, got {tuple(xs.shape)} and {tuple(xt.shape)}")


def _huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(a, b, reduction="mean", beta=1.0)


# ----------------------------------------------------------------------------- literal reference

def _pdist_literal(x: torch.Tensor) -> torch.Tensor:
    """Pairwise distances from the materialised (n, n, D) differences."""
    diff = x.unsqueeze(0) - x.unsqueeze(1)  # [i, j] = x_j - x_i
    d2 = diff.pow(2).sum(-1)
    same = _identical(d2.detach(), _centered_sqnorms(x.detach()))
    d = d2.masked_fill(same, 0.0).clamp(min=EPS_SQ).sqrt()
    return d.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)


def _normalized_distances_literal(x: torch.Tensor) -> torch.Tensor:
    d = _pdist_literal(x)
    return d / d[d > 0].mean()


def rkd_distance_literal(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """RKD distance loss exactly as written: Huber between mean-normalised distance matrices."""
    _check_pair(xs, xt)
    dt = _compute_dtype(xs)
    if len(xs) < 2:
        return xs.new_zeros((), dtype=dt) + 0.0 * xs.sum()
    with _no_autocast(xs):
        with torch.no_grad():
            t = _normalized_distances_literal(xt.detach().to(dt))
        s = _normalized_distances_literal(xs.to(dt))
        return _huber(s, t)


def _angles_literal(x: torch.Tensor) -> torch.Tensor:
    """cos_ijk = <e_ij, e_ik> with e_ij the unit vector from x_i to x_j (0 for identical pieces)."""
    diff = x.unsqueeze(0) - x.unsqueeze(1)  # (n, n, D): [i, j] = x_j - x_i
    d2 = diff.pow(2).sum(-1)
    same = _identical(d2.detach(), _centered_sqnorms(x.detach()))
    inv = d2.clamp(min=EPS_SQ).rsqrt().masked_fill(same, 0.0)
    e = diff * inv.unsqueeze(-1)
    return torch.bmm(e, e.transpose(1, 2))  # (n, n, n)


def rkd_angle_literal(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """RKD angle loss exactly as written: Huber between the (n, n, n) cosine tensors."""
    _check_pair(xs, xt)
    dt = _compute_dtype(xs)
    with _no_autocast(xs):
        with torch.no_grad():
            t = _angles_literal(xt.detach().to(dt))
        s = _angles_literal(xs.to(dt))
        return _huber(s, t)


# ----------------------------------------------------------------------------- fast (Gram) path

def _prepared(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise squared distances from the Gram matrix of the centred pieces (identical pairs,
    the diagonal included, set to 0) and the identical-pair mask."""
    xc = (x - x.mean(0, keepdim=True)).to(_gram_dtype(x.device))  # centring shrinks the rounding error
    g = xc @ xc.T
    sq = torch.diagonal(g)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * g).clamp(min=0.0)
    same = _identical(d2.detach(), sq.detach())
    return d2.masked_fill(same, 0.0).to(x.dtype), same


def _normalized_distances(d2: torch.Tensor) -> torch.Tensor:
    n = d2.shape[0]
    d = d2.clamp(min=EPS_SQ).sqrt()
    d = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), 0.0)
    # Off-diagonal entries are >= sqrt(EPS_SQ) > 0, so "mean of positive entries" is this.
    return d / (d.sum() / (n * (n - 1)))


def rkd_distance(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """RKD distance loss between (n, D) piece matrices, from the Gram matrix (O(n^2 D))."""
    return rkd_loss(xs, xt, distance_weight=1.0, angle_weight=0.0)


def _half_inverse_norms(d2: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """sqrt(1/2) / |x_j - x_i| per [i, j]; 0 where the pair counts as identical (j = i included)."""
    return d2.clamp(min=EPS_SQ).rsqrt().masked_fill(same, 0.0).mul_(0.5 ** 0.5)


def _cosines(d2: torch.Tensor, q: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos_ijk for anchors i in ``rows`` by the law of cosines, with its two factors.

    cos_ijk = (d2_ij + d2_ik - d2_jk) * q_ij q_ik with q = sqrt(1/2)/|x_j - x_i| (0 for identical
    pairs, so cos is 0 wherever j or k is identical to i, like the zero unit vector).
    Returns (cos, a, qq) with a = d2_ij + d2_ik - d2_jk and qq = q_ij q_ik, each (rows, n, n).
    """
    a = d2[rows].unsqueeze(2) + d2[rows].unsqueeze(1)
    a -= d2
    qq = q[rows].unsqueeze(2) * q[rows].unsqueeze(1)
    return a * qq, a, qq


CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 22}


def _chunk_rows(n: int, device: torch.device) -> int:
    """Anchors per chunk. CPU: ~2^18-element (1 MB) buffers stay in cache; GPU: larger buffers
    amortise kernel launches while keeping the few live buffers at ~16 MB each."""
    budget = CHUNK_ELEMENTS.get(device.type, 1 << 20)
    return max(1, min(n, budget // max(1, n * n)))


class _AngleLoss(torch.autograd.Function):
    """sum_ijk Huber(cos_s - cos_t) / n^3, forward and analytic gradient in one chunked pass.

    Input: the student's squared-distance matrix (identical pairs zeroed). Its gradient is
    accumulated chunk by chunk during the forward, so memory stays O(n^2 + chunk * n^2) instead
    of an n^3 autograd graph. With c = Huber'(cos_s - cos_t) and p = 1/|x_j - x_i|, for pairs not
    identical: d cos_ijk / d d2_jk = -p_ij p_ik / 2 and d cos_ijk / d d2_ij = p_ij p_ik / 2 -
    cos_ijk p_ij^2 / 2 (and symmetrically for k); identical pairs (p = 0) get no gradient.
    """

    @staticmethod
    def forward(ctx, d2s: torch.Tensor, same_s: torch.Tensor, d2t: torch.Tensor, same_t: torch.Tensor):
        n = d2s.shape[0]
        qs, qt = _half_inverse_norms(d2s, same_s), _half_inverse_norms(d2t, same_t)
        need_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float64, device=d2s.device)  # chunk sums accumulate exactly enough
        grad = torch.zeros_like(d2s) if need_grad else None
        step = _chunk_rows(n, d2s.device)
        for start in range(0, n, step):
            rows = slice(start, min(n, start + step))
            cs, a, qq = _cosines(d2s, qs, rows)
            ct = _cosines(d2t, qt, rows)[0]
            total += F.smooth_l1_loss(cs, ct, reduction="sum", beta=1.0).double()
            if need_grad:
                c = torch.sub(cs, ct, out=ct).clamp_(-1.0, 1.0)  # Huber'(cos_s - cos_t), beta = 1
                cqq = c.mul_(qq)  # c q_ij q_ik = c p_ij p_ik / 2
                grad -= cqq.sum(0)
                # sum_k c (p_ij p_ik - cos_ijk p_ij^2) = 2 sum_k cqq - 2 q_ij^2 sum_k cqq * a
                grad[rows] += 2.0 * (cqq.sum(2) - (cqq * a).sum(2) * qs[rows].square())
        scale = 1.0 / n ** 3
        if need_grad:
            ctx.save_for_backward(grad.mul_(scale))
        return (total * scale).to(d2s.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None


def rkd_angle(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """RKD angle loss between (n, D) piece matrices: O(n^2 D) Gram + O(n^3) chunked elementwise."""
    return rkd_loss(xs, xt, distance_weight=0.0, angle_weight=1.0)


def rkd_loss(xs: torch.Tensor, xt: torch.Tensor, distance_weight: float = 1.0,
             angle_weight: float = 2.0) -> torch.Tensor:
    """distance_weight * RKD distance + angle_weight * RKD angle, sharing one Gram matrix per side."""
    _check_pair(xs, xt)
    dt = _compute_dtype(xs)
    out = xs.new_zeros((), dtype=dt)
    if len(xs) < 2:  # no relations between fewer than two pieces
        return out + 0.0 * xs.sum()
    with _no_autocast(xs):
        with torch.no_grad():
            d2t, same_t = _prepared(xt.detach().to(dt))
        d2s, same_s = _prepared(xs.to(dt))
        if distance_weight:
            out = out + distance_weight * _huber(_normalized_distances(d2s), _normalized_distances(d2t))
        if angle_weight:
            out = out + angle_weight * _AngleLoss.apply(d2s, same_s, d2t, same_t)
    return out


def rkd_loss_literal(xs: torch.Tensor, xt: torch.Tensor, distance_weight: float = 1.0,
                     angle_weight: float = 2.0) -> torch.Tensor:
    """``rkd_loss`` from the literal terms (reference)."""
    out = xs.new_zeros((), dtype=_compute_dtype(xs))
    if distance_weight:
        out = out + distance_weight * rkd_distance_literal(xs, xt)
    if angle_weight:
        out = out + angle_weight * rkd_angle_literal(xs, xt)
    return out


# ----------------------------------------------------------------------------- pieces and CRD

def slice_pieces(x: torch.Tensor, granularity: str, patch_size: int = 32) -> torch.Tensor:
    """Cut (N, C, H, W) images into pieces: rows (N, H, C*W), columns (N, W, C*H) or
    patches (N, P, C*p*p), P = (H/p)*(W/p) in row-major patch order. Same order for S and T."""
    if x.dim() != 4:
        raise ValueError(f"CRD expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if granularity == "rows":
        return x.permute(0, 2, 1, 3).reshape(n, h, c * w)
    if granularity == "columns":
        return x.permute(0, 3, 1, 2).reshape(n, w, c * h)
    if granularity == "patches":
        p = patch_size
        if h % p or w % p:
            # a user error, not a bug: reachable from a recipe whose data.crop_size loss.patch_size does not divide
            raise CrdError(f"CRD patch_size {p} does not divide the image size {h}x{w}; "
                           f"use images whose height and width are multiples of {p} or another patch size")
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, (h // p) * (w // p), c * p * p)
    raise ValueError(f"unknown CRD granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")


def _crd_terms(student: torch.Tensor, teacher: torch.Tensor, weights: dict[str, float], patch_size: int,
               distance_weight: float, angle_weight: float, pool_patches: bool, per_image: bool,
               rkd_fn) -> dict[str, torch.Tensor]:
    if student.shape != teacher.shape:
        raise ValueError(f"CRD needs student and teacher outputs of the same shape, "
                       f"got {tuple(student.shape)} and {tuple(teacher.shape)}")

    def rkd(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        return rkd_fn(xs, xt, distance_weight, angle_weight)

    terms: dict[str, torch.Tensor] = {}
    for name in GRANULARITIES:
        w = weights[name]
        if not w:
            continue
        ps, pt = slice_pieces(student, name, patch_size), slice_pieces(teacher, name, patch_size)
        if per_image:
            value = sum(rkd(ps[b], pt[b]) for b in range(len(ps)))
        elif name == "patches" and pool_patches:
            value = rkd(ps.reshape(-1, ps.shape[-1]), pt.reshape(-1, pt.shape[-1]))
        else:
            value = sum(rkd(ps[b], pt[b]) for b in range(len(ps))) / len(ps)
        terms[name] = w * value
    return terms


def crd_literal(student: torch.Tensor, teacher: torch.Tensor, patch_size: int = 32, rows: float = 1.0,
                columns: float = 1.0, patches: float = 1.0, distance_weight: float = 1.0,
                angle_weight: float = 2.0, pool_patches: bool = True, per_image: bool = False) -> torch.Tensor:
    """CRD with the literal RKD terms (reference for tests and benchmarks; slow, memory-hungry)."""
    terms = _crd_terms(student, teacher, {"rows": rows, "columns": columns, "patches": patches}, patch_size,
                       distance_weight, angle_weight, pool_patches, per_image, rkd_loss_literal)
    return sum(terms.values()) if terms else student.new_zeros((), dtype=_compute_dtype(student))


class CRDLoss(nn.Module):
    """Content Relationship Distillation loss between student and teacher outputs (N, C, H, W).

    Per granularity g in (rows, columns, patches): RKD_g = distance_weight * distance +
    angle_weight * angle over the pieces of g; CRD = sum_g weight_g * RKD_g (weight 0 skips g).

    Batch semantics:
      * ``per_image=False`` (CycleGAN, the default): rows and columns are related within each image
        and averaged over the batch; patches of all images are pooled into one set
        (``pool_patches=True``; with False they are per image and averaged like rows).
      * ``per_image=True`` (Pix2Pix): every granularity is computed per image and summed over the
        batch (so the value grows with the batch size, as in the reference code).
    The teacher side never receives gradient. Computation is in float32 (float64 inputs stay
    float64) regardless of any enclosing autocast.
    """

    def __init__(self, patch_size: int = 32, rows: float = 1.0, columns: float = 1.0, patches: float = 1.0,
                 distance_weight: float = 1.0, angle_weight: float = 2.0, pool_patches: bool = True,
                 per_image: bool = False):
        super().__init__()
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"CRD patch_size must be a positive integer, got {patch_size!r}")
        for key, value in (("rows", rows), ("columns", columns), ("patches", patches),
                           ("distance_weight", distance_weight), ("angle_weight", angle_weight)):
            if value < 0:
                raise ValueError(f"CRD weight {key} must be >= 0, got {value}")
        self.patch_size = int(patch_size)
        self.weights = {"rows": float(rows), "columns": float(columns), "patches": float(patches)}
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.pool_patches = bool(pool_patches)
        self.per_image = bool(per_image)

    def terms(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted per-granularity terms (only those with weight > 0); they sum to ``forward``."""
        return _crd_terms(student, teacher, self.weights, self.patch_size, self.distance_weight,
                          self.angle_weight, self.pool_patches, self.per_image, rkd_loss)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        terms = self.terms(student, teacher)
        if not terms:
            return student.new_zeros((), dtype=_compute_dtype(student))
        return sum(terms.values())

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return (f"patch_size={self.patch_size}, {w}, distance_weight={self.distance_weight:g}, "
                f"angle_weight={self.angle_weight:g}, pool_patches={self.pool_patches}, per_image={self.per_image}")


class InstanceRKDLoss(nn.Module):
    """Instance-level RKD baseline (ablation): relations between whole images of the batch.

    Each output image is flattened to one vector; the loss is distance_weight * distance +
    angle_weight * angle over the N vectors (0 for a batch of one: no relations to keep).
    """

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0):
        super().__init__()
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"instance RKD needs outputs of the same shape, got {tuple(student.shape)} "
                           f"and {tuple(teacher.shape)}")
        xs, xt = student.reshape(len(student), -1), teacher.reshape(len(teacher), -1)
        return rkd_loss(xs, xt, self.distance_weight, self.angle_weight)
