"""Column statistics shared by the criteria: the m-spacing entropy estimator, the box transforms,
the off-diagonal covariance penalty and the input checks.

Pure math: no I/O, no globals beyond the constant transform table. Everything is computed in
float32 with autocast disabled, whatever the input dtype (fp16/bf16 ties would otherwise give
zero spacings and huge gradients; docs/architecture.md, "Criteria call convention").

The m-spacing estimator
-----------------------
For one column with sorted values x_(1) <= ... <= x_(N),

    H = 1/(N-m) * sum_{i=1}^{N-m} log((N+1)/m * (x_(i+m) - x_(i)) + eps),   m = round(sqrt(N)).

This is the one-sided form used by the E2MC paper's code (Learned-Miller & Fisher's RADICAL
estimator), not the textbook two-sided Vasicek form
``1/N sum_i log(N/(2m) (x_(i+m) - x_(i-m)))`` with boundary clamping. Both are consistent.
For a uniform law the spacing ``U_(i+m) - U_(i)`` is Beta(m, N+1-m), so the exact bias of the
one-sided form (eps aside) is ``psi(m) - log(m) + log(N+1) - psi(N+1) ~= -1/(2m)``: with the
default m = sqrt(N) it under-estimates by about ``1/(2 sqrt(N))`` nats (-0.0078 at N=4096), plus
a density-curvature term that also vanishes as N grows. The two-sided form clamps at the
boundaries and has a larger O(m/N) edge bias for small N. Gradients of either form are equally
useful for maximisation; the bias only matters when reporting absolute nats.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch

from e2mc.criteria.kernels import SpacingEntropy, offdiag_stats
from e2mc.errors import ConfigError, CriterionInputError


def default_m(n: int) -> int:
    """Default spacing ``m = round(sqrt(n))`` (at least 1) for a batch of ``n`` samples."""
    return max(1, int(round(math.sqrt(n))))


def _gaussian_cdf(x: torch.Tensor) -> torch.Tensor:
    # Phi(x) = 0.5 * (1 + erf(x / sqrt(2))); torch.special.ndtr computes exactly that.
    return torch.special.ndtr(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "gaussian_cdf": _gaussian_cdf,
    "identity": _identity,
}


def get_transform(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the element-wise transform called ``name`` (see ``TRANSFORMS``).

    ``"sigmoid"`` and ``"gaussian_cdf"`` (standard normal CDF, Phi) map embeddings into the box
    (0, 1)^D as in the paper; ``"identity"`` keeps them as they are.

    Raises:
        ConfigError: for an unknown name; the message lists the valid names.
    """
    try:
        return TRANSFORMS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown transform {name!r}; use one of {sorted(TRANSFORMS)}") from None


_DEFERRED: list[dict] = []


@contextlib.contextmanager
def deferred_finite_checks() -> Iterator[Callable[[], torch.Tensor | None]]:
    """Inside the block the criteria's finiteness checks read nothing back to the host.

    Each checked tensor (once, however many criteria check it) contributes its min and max;
    the yielded function returns ONE 0-d float32 tensor on the device: 0.0 when every checked
    tensor was finite, NaN otherwise (None when nothing was checked). The training loop keeps it
    with the step's loss terms and reads it at the next logging step (``e2mc.train.loop``).
    """
    seen: dict = {}
    _DEFERRED.append(seen)

    def flag() -> torch.Tensor | None:
        if not seen:
            return None
        ends = torch.cat([torch.stack(mm).float().reshape(-1) for _, mm in seen.values()])
        return (ends * 0.0).sum()  # 0 * (+-inf or nan) = nan: non-finite iff some input was

    try:
        yield flag
    finally:
        _DEFERRED.pop()


def _check_finite(x: torch.Tensor, what: str) -> None:
    if _DEFERRED:  # deferred: one device flag per step (see deferred_finite_checks)
        seen = _DEFERRED[-1]
        if id(x) not in seen:
            with torch.no_grad():
                seen[id(x)] = (x, torch.aminmax(x.detach()))
        return
    # One reduction pass: a sum is finite iff all values are finite, unless it overflows, in
    # which case the exact (two-pass) check decides.
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(x.sum(dtype=acc))):
        return
    if not bool(torch.isfinite(x).all()):
        raise CriterionInputError(
            f"{what} contains NaN or Inf values; check the model output (lower the learning "
            "rate, or enable gradient clipping / fp32) before computing the loss"
        )


def m_spacing_entropy(x: torch.Tensor, m: int | None = None, eps: float = 1e-8) -> torch.Tensor:
    """m-spacing (Vasicek-type) entropy estimate, in nats, of each column of ``x``.

    Args:
        x: (N, D) samples; each column is treated as N draws of a 1-D variable.
        m: spacing; ``default_m(N) = round(sqrt(N))`` when None. Needs ``1 <= m < N``.
        eps: added inside the log so that tied values (zero spacings) stay finite.

    Returns:
        (D,) float32 tensor ``H_d = mean_{i<=N-m} log((N+1)/m * (x_(i+m) - x_(i)) + eps)``,
        differentiable w.r.t. ``x``. Always computed in float32 with autocast disabled.

    Example:
        >>> h = m_spacing_entropy(torch.rand(4096, 3))  # ~ log(1) = 0 for U(0, 1)
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise CriterionInputError(
            f"m_spacing_entropy expects a 2-D (N, D) tensor, got {shape}; "
            "flatten the embeddings to (batch, features) first"
        )
    n = x.shape[0]
    m = default_m(n) if m is None else int(m)
    if m < 1:
        raise CriterionInputError(f"spacing m must be >= 1, got {m}; pass m=None for round(sqrt(N))")
    if n <= m:
        raise CriterionInputError(
            f"m-spacing entropy needs more samples than the spacing: N={n} <= m={m}; "
            "use a larger batch (N >= 4) or a smaller m"
        )
    _check_finite(x, "input of m_spacing_entropy")
    with torch.autocast(device_type=x.device.type, enabled=False):
        # One packed int64 sort per column and a closed-form backward (see kernels.py).
        return SpacingEntropy.apply(x.float(), m, float(eps))


def offdiag_cov_sq_sum(xc: torch.Tensor, denom: float) -> torch.Tensor:
    """Sum of squared off-diagonal entries of the covariance ``xc.T @ xc / denom``.

    ``xc`` must be column-centred (N, D) float32. When N < D the identity
    ``||X^T X||_F = ||X X^T||_F`` lets us use the (N, N) Gram matrix instead of the (D, D)
    covariance (D/N times fewer flops); the diagonal is the column sums of squares.
    """
    total, _, _ = offdiag_stats(xc)
    return total / (denom * denom)


def check_views(views: Sequence[torch.Tensor], who: str, n_views: int | None = None) -> None:
    """Validate a list of per-view (N, D) embeddings: non-empty, 2-D, same shape, finite.

    Raises:
        CriterionInputError: with a message saying what is wrong and what to pass instead.
    """
    if isinstance(views, torch.Tensor) or not isinstance(views, (list, tuple)) or len(views) == 0:
        raise CriterionInputError(
            f"{who} expects a non-empty list of per-view (N, D) tensors, got {type(views).__name__}; pass e.g. [z1, z2]"
        )
    if n_views is not None and len(views) != n_views:
        raise CriterionInputError(f"{who} expects exactly {n_views} views, got {len(views)}; pass [z1, z2]")
    for i, v in enumerate(views):
        if not isinstance(v, torch.Tensor) or v.dim() != 2:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise CriterionInputError(
                f"{who}: view {i} must be a 2-D (N, D) tensor, got {shape}; flatten to (batch, features)"
            )
        if v.shape != views[0].shape:
            raise CriterionInputError(
                f"{who}: all views must have the same shape, view 0 is {tuple(views[0].shape)} "
                f"but view {i} is {tuple(v.shape)}; pass views of the same batch and width"
            )
        if v.shape[0] < 2:
            raise CriterionInputError(
                f"{who}: need at least 2 samples per view, got N={v.shape[0]}; use a larger batch"
            )
        _check_finite(v, f"{who}: view {i}")
