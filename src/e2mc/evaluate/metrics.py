"""Label-free representation metrics: RankMe, spectrum, alignment, uniformity, marginal entropy.

Pure functions on tensors (no I/O). Inputs are embedding matrices ``z`` of shape (N, D).

Example:
    >>> import torch
    >>> from e2mc.evaluate.metrics import rankme
    >>> z = torch.randn(256, 32)
    >>> 1.0 <= rankme(z) <= 32.0
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from e2mc.errors import CriterionInputError


def _check_2d(z: torch.Tensor, name: str = "z", min_rows: int = 1) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise CriterionInputError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2:
        raise CriterionInputError(f"{name} must be 2-D (N, D), got shape {tuple(z.shape)}; flatten or pool first")
    if z.shape[0] < min_rows:
        raise CriterionInputError(f"{name} needs at least {min_rows} rows, got {z.shape[0]}; pass more samples")
    if not torch.isfinite(z).all():
        raise CriterionInputError(f"{name} contains NaN or infinite values; check the model/checkpoint")
    return z


def singular_values(z: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float64) of the uncentred (N, D) embedding matrix."""
    z = _check_2d(z)
    return torch.linalg.svdvals(z.detach().to(torch.float64))


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al., 2023) of the uncentred embedding matrix.

    ``p_k = s_k / sum(s) + eps``; ``RankMe = exp(-sum_k p_k log p_k)``, computed in float64.
    A matrix of rank r with r equal singular values gives (almost exactly) r.
    """
    s = singular_values(z)
    total = s.sum()
    if total <= 0:
        raise CriterionInputError("rankme: all embeddings are zero; the representation has collapsed")
    p = s / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """Alignment (Wang & Isola, 2020): mean ||f(x) - f(x+)||^alpha on L2-normalised embeddings.

    ``z1[i]`` and ``z2[i]`` are two views of the same sample.
    """
    _check_2d(z1, "z1")
    _check_2d(z2, "z2")
    if z1.shape != z2.shape:
        raise CriterionInputError(f"alignment: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must have the same shape")
    a = F.normalize(z1.detach().double(), dim=1)
    b = F.normalize(z2.detach().double(), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """Uniformity (Wang & Isola, 2020): log mean_{i<j} exp(-t ||z_i - z_j||^2), L2-normalised z."""
    z = _check_2d(z, min_rows=2)
    x = F.normalize(z.detach().double(), dim=1)
    sq = torch.pdist(x, p=2).pow(2)  # the N(N-1)/2 pairs i<j
    return float(torch.logsumexp(-t * sq, dim=0)) - math.log(sq.numel())


def marginal_entropy(z: torch.Tensor, transform: str = "sigmoid", m: int | None = None) -> float:
    """Mean m-spacing entropy of the 1-D marginals of ``transform(z)`` (the E2MC entropy term)."""
    from e2mc.criteria.entropy import get_transform, m_spacing_entropy

    z = _check_2d(z, min_rows=2)
    u = get_transform(transform)(z.detach().float())
    return float(m_spacing_entropy(u, m=m).mean())


def e2mc_covariance(z: torch.Tensor, transform: str = "sigmoid") -> float:
    """E2MC covariance term: sum of squared off-diagonal covariances of ``transform(z)``, over D."""
    from e2mc.criteria.entropy import get_transform

    z = _check_2d(z, min_rows=2)
    u = get_transform(transform)(z.detach().float()).double()
    u = u - u.mean(dim=0, keepdim=True)
    cov = u.T @ u / (u.shape[0] - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return float(off.pow(2).sum() / u.shape[1])


def get_mapped(z: torch.Tensor, transform: str = "sigmoid") -> torch.Tensor:
    """``transform(z)`` in float32: the embeddings mapped into the box, as E2MC sees them."""
    from e2mc.criteria.entropy import get_transform

    return get_transform(transform)(_check_2d(z).detach().float())
