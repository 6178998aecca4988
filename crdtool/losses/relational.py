"""Relational knowledge distillation (RKD) and Content Relationship Distillation (CRD).

CRD cuts the student output S and the teacher output T into pieces (pixel rows, pixel columns,
p x p patches) and asks the student to reproduce the *relations* between the teacher's pieces:
their pairwise distances and the angles they form (RKD distance + 2 * RKD angle per granularity;
see /work/shared/design/crd-method.md, section "CRD").

Two implementations of the same numbers live here:

- ``*_literal``: the formulation as written (n x n x D difference tensors). Kept as the
  reference for tests and benchmarks; ~200 MB and tens of seconds for rows of a 256 px image.
- ``rkd_distance`` / ``rkd_angle``: the same values from the Gram matrix of the pieces. Every
  inner product of differences follows from pairwise squared distances (law of cosines),
  <x_j - x_i, x_k - x_i> = (d2_ij + d2_ik - d2_jk) / 2, so the D factor disappears. The n^3 angle
  part runs in chunks of anchors i with a hand-written gradient (no autograd graph of size n^3).

Degenerate pairs: a pair whose squared distance is at most ``tol * (|x_i|^2 + |x_j|^2)`` (norms of
the pieces after subtracting their mean; tol 1e-5 in float32, 1e-12 in float64) counts as
identical in BOTH implementations: its distance is sqrt(1e-12) (the clamp) and its unit
difference vector is 0 (as for j = i), both without gradient. This is what makes the Gram path
agree with the literal one on duplicated pieces (flat image regions), where the Gram path's
rounding would otherwise invent a direction.
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


def _identical_tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-5


def _centered_sqnorms(x: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean(0, keepdim=True)
    return (xc * xc).sum(1)


def _identical(d2: torch.Tensor, sqnorm: torch.Tensor) -> torch.Tensor:
    """Mask of pairs treated as the same piece: the diagonal and (near-)duplicates."""
    tol = _identical_tol(d2.dtype)
    same = d2 <= tol * (sqnorm[:, None] + sqnorm[None, :])
    same.fill_diagonal_(True)
    return same


def _check_pair(xs: torch.Tensor, xt: torch.Tensor) -> None:
    if xs.dim() != 2 or xs.shape != xt.shape:
        raise CrdError(f"RKD needs two (n, D) matrices of the same shape, got {tuple(xs.shape)} and {tuple(xt.shape)}")


def _huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(a, b, reduction="mean", beta=1.0)


# ----------------------------------------------------------------------------- literal reference

def _pdist_literal(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise distances from the materialised (n, n, D) differences; returns (d, identical)."""
    diff = x.unsqueeze(0) - x.unsqueeze(1)  # [i, j] = x_j - x_i
    d2 = diff.pow(2).sum(-1)
    same = _identical(d2.detach(), _centered_sqnorms(x.detach()))
    d = d2.masked_fill(same, 0.0).clamp(min=EPS_SQ).sqrt()
    return d.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0), same


def _normalized_distances_literal(x: torch.Tensor) -> torch.Tensor:
    d, _ = _pdist_literal(x)
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
    xc = x - x.mean(0, keepdim=True)  # translation-invariant; shrinks the Gram's rounding error
    g = xc @ xc.T
    sq = torch.diagonal(g)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * g).clamp(min=0.0)
    same = _identical(d2.detach(), sq.detach())
    return d2.masked_fill(same, 0.0), same


def _normalized_distances(d2: torch.Tensor) -> torch.Tensor:
    n = d2.shape[0]
    d = d2.clamp(min=EPS_SQ).sqrt()
    d = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), 0.0)
    # Off-diagonal entries are >= sqrt(EPS_SQ) > 0, so "mean of positive entries" is this.
    return d / (d.sum() / (n * (n - 1)))


def rkd_distance(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """RKD distance loss between (n, D) piece matrices, from the Gram matrix (O(n^2 D))."""
    _check_pair(xs, xt)
    dt = _compute_dtype(xs)
    if len(xs) < 2:
        return xs.new_zeros((), dtype=dt) + 0.0 * xs.sum()
    with _no_autocast(xs):
        with torch.no_grad():
            t = _normalized_distances(_prepared(xt.detach().to(dt))[0])
        s = _normalized_distances(_prepared(xs.to(dt))[0])
        return _huber(s, t)


def _inv_and_norm(d2: torch.Tensor, same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1/|x_j - x_i| and |x_j - x_i| per [i, j], both 0 where the pair counts as identical."""
    inv = d2.clamp(min=EPS_SQ).rsqrt().masked_fill(same, 0.0)
    return inv, d2 * inv


def _cosines(d2: torch.Tensor, inv: torch.Tensor, nrm: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos_ijk, p_ij p_ik) for anchors i in ``rows``; cos = (n_ij p_ik + p_ij n_ik - d2_jk p_ij p_ik) / 2.

    (For non-identical pairs n p = 1, so this is (d2_ij + d2_ik - d2_jk) / (2 n_ij n_ik); it is 0
    wherever j or k is identical to i.)
    """
    p, m = inv[rows], nrm[rows]
    pp = p.unsqueeze(2) * p.unsqueeze(1)
    u = torch.stack((m, p), 2)
    v = torch.stack((p, m), 1)
    return torch.baddbmm(d2.unsqueeze(0) * pp, u, v, beta=-0.5, alpha=0.5), pp


def _chunk_rows(n: int, budget: int = 1 << 20) -> int:
    return max(1, min(n, budget // max(1, n * n)))


class _AngleLoss(torch.autograd.Function):
    """Huber(cos_s, cos_t) summed over all (i, j, k), forward and analytic gradient in one pass.

    Input: the student's squared-distance matrix (identical pairs zeroed). The gradient w.r.t.
    it is accumulated chunk by chunk during the forward, so memory stays O(n^2 + chunk * n^2).
    For non-identical j, k (anchor i): d cos/d d2_jk = -p_j p_k / 2 and
    d cos/d d2_ij = p_j p_k / 2 - cos p_j^2 / 2 (same for k); identical pairs get no gradient.
    """

    @staticmethod
    def forward(ctx, d2s: torch.Tensor, same_s: torch.Tensor, d2t: torch.Tensor, same_t: torch.Tensor):
        n = d2s.shape[0]
        inv_s, nrm_s = _inv_and_norm(d2s, same_s)
        inv_t, nrm_t = _inv_and_norm(d2t, same_t)
        need_grad = ctx.needs_input_grad[0]
        total = d2s.new_zeros(())
        grad = torch.zeros_like(d2s) if need_grad else None
        step = _chunk_rows(n)
        for start in range(0, n, step):
            rows = slice(start, min(n, start + step))
            cs, pp = _cosines(d2s, inv_s, nrm_s, rows)
            ct, _ = _cosines(d2t, inv_t, nrm_t, rows)
            diff = cs - ct
            c = diff.clamp(-1.0, 1.0)  # Huber'(diff), beta = 1
            flat_c = c.reshape(-1)
            # Huber(diff) = c * (diff - c / 2) with c the clamped diff.
            total += torch.dot(flat_c, diff.reshape(-1)) - 0.5 * torch.dot(flat_c, flat_c)
            if need_grad:
                cpp = c * pp
                grad -= 0.5 * cpp.sum(0)
                p = inv_s[rows]
                # sum_k c (p_j p_k - cos p_j^2) per [i, j]
                grad[rows] += cpp.sum(2) - (c * cs).sum(2) * p * p
        scale = 1.0 / (n ** 3)
        if need_grad:
            ctx.save_for_backward(grad * scale)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None


def rkd_angle(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """RKD angle loss between (n, D) piece matrices: O(n^2 D) Gram + O(n^3) chunked elementwise."""
    _check_pair(xs, xt)
    dt = _compute_dtype(xs)
    with _no_autocast(xs):
        with torch.no_grad():
            d2t, same_t = _prepared(xt.detach().to(dt))
        d2s, same_s = _prepared(xs.to(dt))
        return _AngleLoss.apply(d2s, same_s, d2t, same_t)


# ----------------------------------------------------------------------------- pieces and CRD

def slice_pieces(x: torch.Tensor, granularity: str, patch_size: int = 32) -> torch.Tensor:
    """Cut (N, C, H, W) images into pieces: rows (N, H, C*W), columns (N, W, C*H) or
    patches (N, P, C*p*p), P = (H/p)*(W/p) in row-major patch order. Same order for S and T."""
    if x.dim() != 4:
        raise CrdError(f"CRD expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if granularity == "rows":
        return x.permute(0, 2, 1, 3).reshape(n, h, c * w)
    if granularity == "columns":
        return x.permute(0, 3, 1, 2).reshape(n, w, c * h)
    if granularity == "patches":
        p = patch_size
        if h % p or w % p:
            raise CrdError(f"CRD patch_size {p} does not divide the image size {h}x{w}; "
                           f"use images whose height and width are multiples of {p} or another patch size")
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, (h // p) * (w // p), c * p * p)
    raise CrdError(f"unknown CRD granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")


def _crd_terms(student: torch.Tensor, teacher: torch.Tensor, weights: dict[str, float], patch_size: int,
               distance_weight: float, angle_weight: float, pool_patches: bool, per_image: bool,
               distance_fn, angle_fn) -> dict[str, torch.Tensor]:
    if student.shape != teacher.shape:
        raise CrdError(f"CRD needs student and teacher outputs of the same shape, "
                       f"got {tuple(student.shape)} and {tuple(teacher.shape)}")

    def rkd(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        out = 0.0
        if distance_weight:
            out = out + distance_weight * distance_fn(xs, xt)
        if angle_weight:
            out = out + angle_weight * angle_fn(xs, xt)
        return out if torch.is_tensor(out) else student.new_zeros((), dtype=_compute_dtype(student))

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
                       distance_weight, angle_weight, pool_patches, per_image,
                       rkd_distance_literal, rkd_angle_literal)
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
            raise CrdError(f"CRD patch_size must be a positive integer, got {patch_size!r}")
        for key, value in (("rows", rows), ("columns", columns), ("patches", patches),
                           ("distance_weight", distance_weight), ("angle_weight", angle_weight)):
            if value < 0:
                raise CrdError(f"CRD weight {key} must be >= 0, got {value}")
        self.patch_size = int(patch_size)
        self.weights = {"rows": float(rows), "columns": float(columns), "patches": float(patches)}
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.pool_patches = bool(pool_patches)
        self.per_image = bool(per_image)

    def terms(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted per-granularity terms (only those with weight > 0); they sum to ``forward``."""
        return _crd_terms(student, teacher, self.weights, self.patch_size, self.distance_weight,
                          self.angle_weight, self.pool_patches, self.per_image, rkd_distance, rkd_angle)

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
            raise CrdError(f"instance RKD needs outputs of the same shape, got {tuple(student.shape)} "
                           f"and {tuple(teacher.shape)}")
        xs, xt = student.reshape(len(student), -1), teacher.reshape(len(teacher), -1)
        return self.distance_weight * rkd_distance(xs, xt) + self.angle_weight * rkd_angle(xs, xt)
