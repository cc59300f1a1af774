"""Fused forward/backward kernels behind ``m_spacing_entropy`` and ``E2MC`` (private helpers).

Pure math, no I/O. Two tricks make E2MC cheap on CPU:

* **One packed sort.** Each float32 value is mapped to an order-preserving int32 key and packed
  with its row position into one int64 (``key << 32 | position``); a single numpy ``sort`` of
  the int64 rows (SIMD-vectorised, about twice as fast as ``argsort`` of float32 and with no
  ``take_along_axis``) yields both the sorted values (the high words, decoded) and the
  permutation (the low words). Ties are broken by position, so the permutation is stable.
  Other devices use ``torch.sort``.
* **Closed-form backward.** The gradient of the spacing log-sum on the sorted values is
  ``w_{i-m} - w_i`` with ``w_i = c / (c * s_i + eps)`` (``c = (N+1)/m``); it is scattered back to
  the original positions once. The covariance penalty
  ``P = sum_{i != j} (X^T X)_ij^2`` of a column-centred X has ``dP/dX = 4 (G X - X diag(X^T X))``
  with ``G = X X^T`` (or ``4 X offdiag(X^T X)``): one matmul instead of autograd's two. Its
  columns sum to zero, so the centring step needs no backward either.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from e2mc.errors import ConfigError

_LOW31 = 0x7FFFFFFF
_SLOPE_NAMES = frozenset({"sigmoid", "gaussian_cdf", "identity"})
_SQRT_2PI = 2.5066282746310002
_SQRT_HALF = 0.7071067811865476
_F32_EDGE = 2.0**-24  # float32 T(z) = 1 / (1 + s / (1 - s)) is exactly 1.0 for s below ~this


def _order_key(bits: torch.Tensor, nonneg: bool) -> torch.Tensor:
    """Order-preserving int32 key of float32 bit patterns (an involution: also decodes)."""
    return bits if nonneg else bits ^ ((bits >> 31) & _LOW31)


def sort_columns(us: list[torch.Tensor], nonneg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort every column of each (N, D_k) float32 tensor in ``us``.

    Returns ``(values, index)``, both (sum_k D_k, N): row r holds the r-th column (views in
    order) sorted ascending, and the int64 positions it came from. ``nonneg=True`` promises
    that no value is negative (skips the sign mapping; -0.0 still sorts correctly).
    """
    n = us[0].shape[0]
    rows = sum(u.shape[1] for u in us)
    if us[0].device.type != "cpu" or sys.byteorder != "little":
        vals, idx = torch.sort(torch.cat([u.t() for u in us]), dim=1)
        return vals, idx
    keys = torch.empty((rows, n), dtype=torch.int64, device="cpu")  # this path is the CPU's
    words = keys.view(torch.int32).view(rows, n, 2)  # little endian: [..., 0] low, [..., 1] high
    start = 0
    for u in us:
        d = u.shape[1]
        bits = u.t().contiguous().view(torch.int32)
        words[start : start + d, :, 1].copy_(_order_key(bits, nonneg))
        start += d
    words[:, :, 0].copy_(torch.arange(n, dtype=torch.int32, device="cpu"))
    keys.numpy().sort(axis=1)
    vals = _order_key(words[:, :, 1], nonneg).view(torch.float32)
    return vals, keys & 0xFFFFFFFF


def spacing_logs(vals: torch.Tensor, m: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = (N+1)/m * (x_(i+m) - x_(i)) + eps`` of sorted rows, and ``mean_i log a`` per row."""
    return _logs_of_spacings(vals[:, m:] - vals[:, :-m], vals.shape[1], m, eps)


def _logs_of_spacings(diff: torch.Tensor, n: int, m: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    a = diff.mul_((n + 1) / m).add_(eps)
    return a, torch.log(a).mean(dim=1)


def lower_tail(name: str, z: torch.Tensor) -> torch.Tensor:
    """``T(-|z|)`` of the box transform ``name``, accurate in float32 far into the tail (torch's
    float32 ``ndtr`` is 0 below -5.5; ``erfc`` keeps 1e-38)."""
    if name == "sigmoid":
        return z.abs().neg_().sigmoid_()
    return torch.special.erfc(z.abs().mul_(_SQRT_HALF)).mul_(0.5)


def box_spacings(name: str, zs_sorted: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``T(z_(i+m)) - T(z_(i))`` of rows of sorted z, for a CDF ``T`` with ``T(-z) = 1 - T(z)``.

    Computing ``T(z)`` and subtracting loses the upper tail in float32: ``sigmoid(z)`` rounds to
    exactly 1.0 for z > ~16.6 and ``ndtr(z)`` for |z| > ~5.4, so distinct z give tied values and
    zero spacings there. Here only the small side ``s = T(-|z|)`` (precise down to 1e-38) is
    evaluated and ``T(z) = [z >= 0] + q`` with ``q = -s`` for z >= 0, ``q = s`` otherwise, so the
    spacing is ``(q_hi - q_lo) + ([hi >= 0] - [lo >= 0])``: within one tail it subtracts two small
    numbers exactly. The indicator term is 1 only on the spacings that straddle 0, a band of at
    most m per row starting m before the row's first non-negative value (rows are sorted), so it
    is added at those few positions rather than over the whole array. Sorting z (not T(z)) keeps
    the order of saturated values. Returns the spacings and ``s``.
    """
    rows, n = zs_sorted.shape
    s = lower_tail(name, zs_sorted)
    q = torch.where(zs_sorted < 0, s, s.neg())
    diff = q[:, m:] - q[:, :-m]
    first_pos = torch.searchsorted(zs_sorted, zs_sorted.new_zeros(rows, 1))  # (rows, 1)
    band = first_pos - m + torch.arange(m, device=zs_sorted.device)  # lower indices i of the band
    inside = (band >= 0) & (band < n - m)
    diff.scatter_add_(1, band.clamp_(0, n - m - 1), inside.to(diff.dtype))
    return diff, s


def _sampled_rows(rows: int, views: int) -> slice:
    """Every k-th row of a (views * D, ...) array, at most ~256 per view (cheap diagnostics)."""
    return slice(None, None, max(1, rows // (256 * views)))


def spacing_grad(row_grad: torch.Tensor, a: torch.Tensor, idx: torch.Tensor, m: int) -> torch.Tensor:
    """Gradient, at the original positions, of ``sum_r row_grad[r] * mean_i log a[r, i]``."""
    rows, n = idx.shape
    w = (row_grad.unsqueeze(1) * ((n + 1) / m / (n - m))) / a
    g_sorted = torch.zeros((rows, n), dtype=w.dtype, device=w.device)
    g_sorted[:, m:] = w
    g_sorted[:, :-m] -= w
    return torch.empty_like(g_sorted).scatter_(1, idx, g_sorted)


class SpacingEntropy(torch.autograd.Function):
    """(N, D) float32 -> (D,) m-spacing entropies, with the closed-form backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: int, eps: float) -> torch.Tensor:  # type: ignore[override]
        vals, idx = sort_columns([x])
        a, h = spacing_logs(vals, m, eps)
        ctx.save_for_backward(a, idx)
        ctx.m = m
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        a, idx = ctx.saved_tensors
        return spacing_grad(grad, a, idx, ctx.m).t(), None, None


def offdiag_stats(uc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sum_{i != j} (uc^T uc)_ij^2, Gram-or-offdiag-cov, column sums of squares)``."""
    n, d = uc.shape
    diag = (uc * uc).sum(dim=0)
    if 2 * n <= d:
        gram = uc @ uc.t()
        return (gram * gram).sum() - (diag * diag).sum(), gram, diag
    cov = uc.t() @ uc
    cov.diagonal().zero_()
    return (cov * cov).sum(), cov, diag


def _offdiag_grad(uc: torch.Tensor, mat: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """``d/d uc`` of ``sum_{i != j} (uc^T uc)_ij^2`` given ``offdiag_stats``' matrices."""
    if 2 * uc.shape[0] <= uc.shape[1]:  # same test as offdiag_stats: mat is the Gram matrix
        return (mat @ uc).sub_(uc * diag).mul_(4.0)
    return (uc @ mat).mul_(4.0)


def _transform_slope(name: str, z: torch.Tensor) -> torch.Tensor:
    """Derivative of the transform at ``z`` (sigmoid: ``s (1 - s)`` with ``s = sigmoid(-|z|)``,
    which stays positive where ``sigmoid(z)`` itself has rounded to 1)."""
    if name == "sigmoid":
        s = lower_tail(name, z)
        return s.sub_(s * s)
    return torch.exp(z * z * -0.5).div_(_SQRT_2PI)


class E2MCStats(torch.autograd.Function):
    """Per-view ``(entropy, covariance)`` of E2MC from the raw views, as one autograd node.

    ``forward(name, transform, m, eps, *zs)``: ``u = transform(z.float())``; entropy = mean over
    columns of the m-spacing entropy of ``u`` (translation invariant, so computed before
    centring); covariance = ``sum_{i != j} cov(u)_ij^2 / D`` with ``cov = uc^T uc / (N - 1)``.
    For the box transforms the columns of ``z`` are sorted and the spacings taken with
    ``box_spacings`` (exact in the saturated tails). Returns the (V,) entropies and covariances,
    and two scalars without gradient, diagnostics of a degenerating estimator: the fraction of
    zero spacings (``tied``) and of values within float32 resolution of the box edge,
    ``T(-|z|) <= 2^-24`` (``saturated``: a float32 ``T(z)`` is 1.0 there in the upper tail and the
    transform's slope is < 6e-8). Both are read on every k-th column (at most ~256 per view).
    """

    @staticmethod
    def forward(
        ctx,
        name: str,
        transform: Callable,
        m: int,
        eps: float,  # type: ignore[override]
        *zs: torch.Tensor,
    ):
        if name not in _SLOPE_NAMES:
            raise ConfigError(
                f"E2MC's fused kernel knows the derivative of {sorted(_SLOPE_NAMES)}, not of "
                f"transform {name!r}; use one of those"
            )
        n, d = zs[0].shape
        views = len(zs)
        zf = [z.float() for z in zs]
        us = [transform(z) for z in zf]
        rows = _sampled_rows(views * d, views)
        if name == "identity":
            vals, idx = sort_columns(us)
            diff = vals[:, m:] - vals[:, :-m]
            saturated = vals.new_zeros(())
        else:
            vals, idx = sort_columns(zf)
            diff, edge = box_spacings(name, vals, m)
            saturated = (edge[rows] <= _F32_EDGE).float().mean()
            del edge
        del vals
        tied = (diff[rows] == 0).float().mean()
        a, h = _logs_of_spacings(diff, n, m, eps)
        del diff
        ent = h.view(views, d).mean(dim=1)
        scale = 1.0 / ((n - 1) ** 2 * d)
        covs, saved = [], []
        for u in us:
            uc = u - u.mean(dim=0, keepdim=True)
            total, mat, diag = offdiag_stats(uc)
            covs.append(total * scale)
            saved += [uc, mat, diag]
        ctx.name, ctx.m, ctx.scale, ctx.dtypes = name, m, scale, [z.dtype for z in zs]
        derivs = zf if name != "identity" else []
        ctx.save_for_backward(a, idx, *saved, *derivs)
        ctx.mark_non_differentiable(tied, saturated)
        return ent, torch.stack(covs), tied, saturated

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ent: torch.Tensor, g_cov: torch.Tensor, *_: torch.Tensor):  # type: ignore[override]
        a, idx, *rest = ctx.saved_tensors
        views = len(ctx.dtypes)
        saved, derivs = rest[: 3 * views], rest[3 * views :]
        n, d = saved[0].shape
        g_sorted = spacing_grad(g_ent.repeat_interleave(d) / d, a, idx, ctx.m)
        grads = []
        for k in range(views):
            uc, mat, diag = saved[3 * k : 3 * k + 3]
            g = _offdiag_grad(uc, mat, diag).mul_(g_cov[k] * ctx.scale)
            g += g_sorted[k * d : (k + 1) * d].t()
            if derivs:
                g *= _transform_slope(ctx.name, derivs[k])
            grads.append(g.to(ctx.dtypes[k]))
        return (None, None, None, None, *grads)
