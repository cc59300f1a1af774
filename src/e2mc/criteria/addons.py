"""Regularising add-ons applied on top of a base criterion: VC, uniformity, MMCR and none.

E2MC itself (``e2mc.criteria.e2mc.E2MC``) is the main add-on; these are the baselines the paper
compares with. All take a list of per-view (N, D) embeddings and return ``{"loss", ...}``,
computed in float32 with autocast disabled, on the batch gathered over ranks when ``gather``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from e2mc.criteria.entropy import check_views
from e2mc.criteria.vicreg import covariance_term, variance_hinge
from e2mc.distributed import gather_with_grad


def _prepare(views: Sequence[torch.Tensor], who: str, gather: bool) -> list[torch.Tensor]:
    check_views(views, who)
    return [(gather_with_grad(v) if gather else v).float() for v in views]


class VCAddon(nn.Module):
    """VICReg's variance hinge and covariance penalty without the invariance term.

    ``variance = mean_views hinge(z)``, ``covariance = sum_views cov_term(z)`` (VICReg's own
    convention), ``loss = var_weight * variance + cov_weight * covariance``. With ``normalize``
    the embeddings are L2-normalised first (their per-dimension std is then about 1/sqrt(D),
    so the hinge is always active: lower ``var_weight`` accordingly).

    Example:
        >>> VCAddon()([torch.randn(16, 8), torch.randn(16, 8)])["loss"].shape
        torch.Size([])
    """

    def __init__(
        self,
        var_weight: float = 1.0,
        cov_weight: float = 1.0,
        normalize: bool = False,
        eps: float = 1e-4,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.var_weight, self.cov_weight = float(var_weight), float(cov_weight)
        self.normalize, self.eps, self.gather = bool(normalize), float(eps), bool(gather)

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the VC penalty of the views."""
        with torch.autocast(device_type=views[0].device.type if len(views) else "cpu", enabled=False):
            zs = _prepare(views, "VCAddon", self.gather)
            if self.normalize:
                zs = [F.normalize(z, dim=1) for z in zs]
            var = torch.stack([variance_hinge(z, self.eps) for z in zs]).mean()
            cov = torch.stack([covariance_term(z) for z in zs]).sum()
            loss = self.var_weight * var + self.cov_weight * cov
        return {"loss": loss, "variance": var.detach(), "covariance": cov.detach()}


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola uniformity ``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` of L2-normalised rows.

    Uses squared distances from the Gram matrix (no sqrt, so no NaN gradient at ties) and a
    log-sum-exp for stability.
    """
    n = x.shape[0]
    xn = F.normalize(x, dim=1)
    sq = (2.0 - 2.0 * (xn @ xn.t())).clamp_min(0.0)
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    d2 = sq[iu[0], iu[1]]
    return torch.logsumexp(-t * d2, dim=0) - math.log(d2.numel())


class UniformityAddon(nn.Module):
    """Uniformity on the hypersphere (Wang & Isola 2020), averaged over views.

    ``loss = weight * mean_views uniformity(z, t)`` (minimising spreads the embeddings).

    Example:
        >>> UniformityAddon()([torch.randn(16, 8)])["uniformity"].item() < 0
        True
    """

    def __init__(self, weight: float = 1.0, t: float = 2.0, gather: bool = True) -> None:
        super().__init__()
        self.weight, self.t, self.gather = float(weight), float(t), bool(gather)

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the uniformity loss of the views."""
        with torch.autocast(device_type=views[0].device.type if len(views) else "cpu", enabled=False):
            zs = _prepare(views, "UniformityAddon", self.gather)
            uni = torch.stack([uniformity(z, self.t) for z in zs]).mean()
        return {"loss": self.weight * uni, "uniformity": uni.detach()}


class _NuclearNorm(torch.autograd.Function):
    """``||X||_*`` of an (N, D) matrix through the min(N, D)-sized R of a QR factorisation."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        wide = x.shape[0] < x.shape[1]
        q, r = torch.linalg.qr(x.t() if wide else x)  # same singular values as x
        u, s, vh = torch.linalg.svd(r)
        # x = (q u) s vh (tall) or its transpose (wide); the gradient of sum(s) is U V^T of x.
        ctx.save_for_backward(q, u @ vh)
        ctx.wide = wide
        return s.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q, p = ctx.saved_tensors
        g = q @ p
        return grad * (g.t() if ctx.wide else g)


def nuclear_norm(x: torch.Tensor) -> torch.Tensor:
    """Nuclear norm (sum of singular values) of a 2-D tensor, differentiably.

    Computed from the SVD of the R factor of a QR of ``x^T`` (N < D) or ``x`` (N >= D): an
    exact min(N, D)-sized problem instead of a full SVD of the (N, D) matrix. The gradient is
    ``U V^T`` of ``x`` (``torch.linalg.svdvals``' gradient), which stays finite at repeated or
    zero singular values (there it is a valid subgradient).

    Example:
        >>> float(nuclear_norm(torch.eye(3) * 2))
        6.0
    """
    return _NuclearNorm.apply(x)


class MMCRAddon(nn.Module):
    """Maximum manifold capacity (Yerxa et al. 2023): maximise the nuclear norm of centroids.

    ``c_n = mean_views normalize(z_n)``; ``loss = -weight * ||C||_*`` for the (N, D) centroid
    matrix C. Convention: the plain nuclear norm, *not* divided by N, as in Yerxa et al.; the
    logged ``"nuclear_norm"`` is that value.

    Example:
        >>> MMCRAddon()([torch.randn(16, 8), torch.randn(16, 8)])["loss"].item() < 0
        True
    """

    def __init__(self, weight: float = 1.0, gather: bool = True) -> None:
        super().__init__()
        self.weight, self.gather = float(weight), bool(gather)

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the MMCR loss of the views."""
        with torch.autocast(device_type=views[0].device.type if len(views) else "cpu", enabled=False):
            zs = _prepare(views, "MMCRAddon", self.gather)
            centroids = torch.stack([F.normalize(z, dim=1) for z in zs]).mean(dim=0)
            nuc = nuclear_norm(centroids)
        return {"loss": -self.weight * nuc, "nuclear_norm": nuc.detach()}


class NoAddon(nn.Module):
    """No regulariser: returns a float32 scalar zero loss on the views' device.

    The zero does not require grad, so ``base_loss + addon_loss`` back-propagates as the base
    loss alone.
    """

    def forward(self, views: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Return ``{"loss": 0.0}``."""
        device = views[0].device if views is not None and len(views) else torch.device("cpu")
        return {"loss": torch.zeros((), dtype=torch.float32, device=device)}
