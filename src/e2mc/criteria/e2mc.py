"""E2MC add-on: effective entropy maximisation with a covariance penalty (Chakraborty et al. 2025)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from e2mc.criteria.entropy import check_views, default_m, get_transform
from e2mc.criteria.kernels import E2MCStats
from e2mc.distributed import gather_with_grad
from e2mc.errors import ConfigError, CriterionInputError

_REDUCTIONS = ("mean", "sum")


class E2MC(nn.Module):
    """Entropy of the 1-D marginals (m-spacing) minus an off-diagonal covariance penalty.

    Per view: gather Z across ranks (with gradient), ``U = transform(Z.float())``, centre the
    columns, ``entropy = mean_d m_spacing_entropy(U)_d`` and
    ``covariance = sum_{i != j} cov(U)_ij^2 / D`` with ``cov = U^T U / (N - 1)`` where N is the
    real (gathered) batch size, never a configured one. Views are combined with
    ``view_reduction = (entropy_reduction, covariance_reduction)``; the paper's default
    ``("mean", "sum")`` averages the entropy over views and sums the covariance.

    ``loss = cov_weight * covariance - entropy_weight * entropy``. All math runs in float32 with
    autocast disabled, in one fused autograd node (``kernels.E2MCStats``: one packed sort for
    all views, closed-form backward); the entropy is computed before centring (it is
    translation invariant), which only changes float rounding. The spacing used in the last call is stored in ``self.last_m`` and
    returned as ``"m"``. The box transforms' spacings are computed from the sorted ``Z`` on the
    small side of the CDF (``kernels.box_spacings``), so values in the float32-saturated tails
    (sigmoid beyond |z| ~ 16.6, the normal CDF beyond ~5.4) keep distinct, exact spacings.
    ``"tied"`` (fraction of zero spacings) and ``"saturated"`` (fraction of values within float32
    resolution of the box edge, where the transform's slope is < 6e-8; both read
    on at most ~256 columns per view) are logged so a user sees when the estimator degenerates.

    Ties (e.g. fp16/bf16 projector outputs) give zero spacings; ``eps`` keeps the loss and the
    float32 gradient finite, but a tie's gradient is large, about
    ``entropy_weight * (N+1) / (m * eps * D * (N-m) * views)`` per unit of transform slope. For
    small D and N this can exceed fp16's range (65504) when it flows back into fp16
    activations; bf16 autocast has no such overflow.

    Args:
        transform: name in ``TRANSFORMS`` (``"sigmoid"``, ``"gaussian_cdf"``, ``"identity"``).
        entropy_weight: weight of the (maximised) entropy term.
        cov_weight: weight of the covariance penalty.
        m: fixed spacing, or None for ``round(sqrt(N))`` of the gathered batch.
        eps: added inside the log of the spacings (keeps ties finite).
        gather: gather the views over ranks before computing the statistics.
        view_reduction: ``(entropy_reduction, covariance_reduction)``, each "mean" or "sum".

    Example:
        >>> crit = E2MC(transform="sigmoid")
        >>> out = crit([torch.randn(64, 32), torch.randn(64, 32)])
        >>> out["loss"].shape
        torch.Size([])
    """

    def __init__(
        self,
        transform: str = "sigmoid",
        entropy_weight: float = 10.0,
        cov_weight: float = 1.0,
        m: int | None = None,
        eps: float = 1e-8,
        gather: bool = True,
        view_reduction: tuple[str, str] = ("mean", "sum"),
    ) -> None:
        super().__init__()
        self.transform_name = transform
        self.transform = get_transform(transform)
        if m is not None and int(m) < 1:
            raise ConfigError(f"E2MC spacing m must be >= 1 or None, got {m}")
        if len(view_reduction) != 2 or any(r not in _REDUCTIONS for r in view_reduction):
            raise ConfigError(
                f"view_reduction must be a pair of {_REDUCTIONS} for (entropy, covariance), "
                f"got {view_reduction!r}; the paper's default is ('mean', 'sum')"
            )
        self.entropy_weight = float(entropy_weight)
        self.cov_weight = float(cov_weight)
        self.m = None if m is None else int(m)
        self.eps = float(eps)
        self.gather = bool(gather)
        self.view_reduction = tuple(view_reduction)
        self.last_m: int | None = None

    def extra_repr(self) -> str:
        return (
            f"transform={self.transform_name!r}, entropy_weight={self.entropy_weight}, "
            f"cov_weight={self.cov_weight}, m={self.m}, eps={self.eps:g}, view_reduction={self.view_reduction}"
        )

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the E2MC loss of a list of per-view (N, D) embeddings."""
        check_views(views, "E2MC")
        device = views[0].device
        with torch.autocast(device_type=device.type, enabled=False):
            zs = [gather_with_grad(z) if self.gather else z for z in views]
            n, d = zs[0].shape
            m_used = self.m if self.m is not None else default_m(n)
            if n <= m_used:
                raise CriterionInputError(
                    f"E2MC needs more samples than the spacing: N={n} <= m={m_used}; use a larger batch or a smaller m"
                )
            # One autograd node for all views: packed sort + closed-form backward (kernels.py).
            ent, cov, tied, sat = E2MCStats.apply(self.transform_name, self.transform, m_used, self.eps, *zs)
            ent = ent.mean() if self.view_reduction[0] == "mean" else ent.sum()
            cov = cov.mean() if self.view_reduction[1] == "mean" else cov.sum()
            loss = self.cov_weight * cov - self.entropy_weight * ent
        self.last_m = m_used
        return {
            "loss": loss,
            "entropy": ent.detach(),
            "covariance": cov.detach(),
            "tied": tied,
            "saturated": sat,
            "m": torch.full((), float(m_used), device=device),  # a fill, not a host-to-device copy (no sync)
        }
