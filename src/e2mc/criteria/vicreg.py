"""VICReg loss (Bardes, Ponce & LeCun 2022): invariance + variance hinge + covariance penalty."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.criteria.entropy import check_views, offdiag_cov_sq_sum
from e2mc.distributed import gather_with_grad


def variance_hinge(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``mean_d relu(1 - sqrt(var_d + eps))`` of an (N, D) float tensor (unbiased variance)."""
    std = torch.sqrt(x.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance_term(x: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} cov(x)_ij^2 / D`` with ``cov = xc^T xc / (N - 1)`` (real N)."""
    n, d = x.shape
    xc = x - x.mean(dim=0, keepdim=True)
    return offdiag_cov_sq_sum(xc, n - 1) / d


class VICRegLoss(nn.Module):
    """VICReg criterion on two views, as in the official implementation.

    ``invariance = MSE(z1, z2)``; ``variance = (hinge(z1) + hinge(z2)) / 2`` with
    ``hinge(z) = mean_d relu(1 - sqrt(var_d + eps))``; ``covariance = cov_term(z1) + cov_term(z2)``
    with ``cov_term(z) = sum_{i != j} cov(z)_ij^2 / D`` and ``cov`` divided by the real N - 1.
    ``loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance``.

    With ``gather=True`` both views are gathered across ranks (with gradient) first and *all
    three* terms use the global batch (the official code computes the invariance on the local
    batch; on the global batch its gradient after DDP averaging is identical). Computed in
    float32 with autocast disabled.

    Example:
        >>> out = VICRegLoss()([torch.randn(32, 16), torch.randn(32, 16)])
        >>> sorted(out)
        ['covariance', 'invariance', 'loss', 'variance']
    """

    def __init__(
        self,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        eps: float = 1e-4,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.sim_weight = float(sim_weight)
        self.var_weight = float(var_weight)
        self.cov_weight = float(cov_weight)
        self.eps = float(eps)
        self.gather = bool(gather)

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the VICReg loss of ``[z1, z2]`` (each (N, D))."""
        check_views(views, "VICRegLoss", n_views=2)
        with torch.autocast(device_type=views[0].device.type, enabled=False):
            z1, z2 = (gather_with_grad(v) if self.gather else v for v in views)
            z1, z2 = z1.float(), z2.float()
            inv = F.mse_loss(z1, z2)
            var = (variance_hinge(z1, self.eps) + variance_hinge(z2, self.eps)) / 2
            cov = covariance_term(z1) + covariance_term(z2)
            loss = self.sim_weight * inv + self.var_weight * var + self.cov_weight * cov
        return {
            "loss": loss,
            "invariance": inv.detach(),
            "variance": var.detach(),
            "covariance": cov.detach(),
        }
