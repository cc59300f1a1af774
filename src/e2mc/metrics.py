"""Label-free representation metrics: RankMe, spectrum, alignment, uniformity, marginal entropy.

Pure functions on tensors (no I/O). Inputs are embedding matrices ``z`` of shape (N, D).

Example:
    >>> import torch
    >>> from e2mc.metrics import rankme
    >>> z = torch.randn(256, 32)
    >>> 1.0 <= rankme(z) <= 32.0
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from e2mc.criteria import covariance_term
from e2mc.criteria.addons import uniformity as uniformity_loss
from e2mc.criteria.entropy import get_transform, m_spacing_entropy
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
    return float(uniformity_loss(_check_2d(z, min_rows=2).detach().double(), t))


def marginal_entropy(z: torch.Tensor, transform: str = "sigmoid", m: int | None = None) -> float:
    """Mean m-spacing entropy of the 1-D marginals of ``transform(z)`` (the E2MC entropy term)."""
    z = _check_2d(z, min_rows=2)
    u = get_transform(transform)(z.detach().float())
    return float(m_spacing_entropy(u, m=m).mean())


def e2mc_covariance(z: torch.Tensor, transform: str = "sigmoid") -> float:
    """E2MC covariance term: sum of squared off-diagonal covariances of ``transform(z)``, over D."""
    z = _check_2d(z, min_rows=2)
    return float(covariance_term(get_transform(transform)(z.detach().float()).double()))


def get_mapped(z: torch.Tensor, transform: str = "sigmoid") -> torch.Tensor:
    """``transform(z)`` in float32: the embeddings mapped into the box, as E2MC sees them."""
    return get_transform(transform)(_check_2d(z).detach().float())


def _effective_rank(eigs: torch.Tensor, eps: float = 1e-7) -> float:
    """``exp(-sum_k p_k log p_k)`` with ``p_k = e_k / sum(e) + eps`` (RankMe's form) of non-negative values."""
    eigs = eigs.clamp_min(0)
    total = eigs.sum()
    if total <= 0:
        raise CriterionInputError("effective rank of an all-zero spectrum: the representation has collapsed")
    p = eigs / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def lidar(z: torch.Tensor, n_views: int, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al., ICLR 2024): effective rank of the LDA matrix of surrogate classes.

    ``z`` holds ``n`` surrogate classes of ``n_views`` rows each, class-major (rows
    ``i * n_views ... (i + 1) * n_views - 1`` are the augmentations of image ``i``). With class
    means ``mu_i`` and their mean ``mu``:
    ``S_b = sum_i (mu_i - mu)(mu_i - mu)^T / (n - 1)``,
    ``S_w = sum_ij (z_ij - mu_i)(z_ij - mu_i)^T / (n (n_views - 1)) + delta I``, and LiDAR is the
    effective rank (``p_k = lambda_k / sum(lambda) + eps``) of the eigenvalues ``lambda`` of
    ``S_w^{-1/2} S_b S_w^{-1/2}``. Computed in float64; at most ``min(n - 1, D)``.
    """
    z = _check_2d(z, min_rows=4).detach().to(torch.float64)
    if n_views < 2 or z.shape[0] % n_views or z.shape[0] // n_views < 2:
        raise CriterionInputError(
            f"lidar needs at least 2 images x at least 2 views, rows grouped per image; got {z.shape[0]} rows "
            f"with n_views={n_views}"
        )
    n, d = z.shape[0] // n_views, z.shape[1]
    x = z.view(n, n_views, d)
    means = x.mean(dim=1)
    between = means - means.mean(dim=0)
    s_b = between.T @ between / (n - 1)
    within = (x - means.unsqueeze(1)).reshape(-1, d)
    s_w = within.T @ within / (n * (n_views - 1)) + delta * torch.eye(d, dtype=z.dtype, device=z.device)
    w_vals, w_vecs = torch.linalg.eigh(s_w)
    inv_sqrt = (w_vecs * w_vals.rsqrt()) @ w_vecs.T
    return _effective_rank(torch.linalg.eigvalsh(inv_sqrt @ s_b @ inv_sqrt), eps)


def covariance_spectrum(z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending, float64) of the covariance ``zc^T zc / (N - 1)`` of centred ``z``."""
    z = _check_2d(z, min_rows=2).detach().to(torch.float64)
    zc = z - z.mean(dim=0)
    return torch.linalg.svdvals(zc).pow(2).div(z.shape[0] - 1)


def alpha_req(z: torch.Tensor, fit_range: tuple[int, int] | None = None) -> dict:
    """alpha-ReQ (Agrawal et al., NeurIPS 2022): power-law decay ``lambda_k ~ k^-alpha`` of the
    covariance eigenspectrum, by least squares of ``log lambda_k`` on ``log k``.

    ``fit_range = (k_min, k_max)``: 1-based ranks, both included. Default ``(2, r // 2)`` with
    ``r = min(N - 1, D)``: the top eigenvalue and the bottom half (where a finite sample's spectrum
    falls off a cliff) are left out. The range depends only on the shape, never on the values,
    so calls on the same shape always fit the same ranks. Ranks whose eigenvalue is not positive
    are dropped from the fit. Returns ``{"alpha", "r2", "k_min", "k_max"}``.
    """
    eigs = covariance_spectrum(z)
    r = min(z.shape[0] - 1, z.shape[1])
    k_min, k_max = fit_range if fit_range is not None else (2, max(r // 2, 4))
    k_min, k_max = int(k_min), min(int(k_max), r)
    if k_min < 1 or k_max - k_min < 2:
        raise CriterionInputError(
            f"alpha_req fit range ({k_min}, {k_max}) must hold at least 3 ranks within 1..{r}; pass "
            "more samples / dimensions or a wider fit_range"
        )
    lam = eigs[k_min - 1 : k_max]
    k = torch.arange(k_min, k_max + 1, dtype=torch.float64, device=lam.device)[lam > 0]
    lam = lam[lam > 0]
    if lam.numel() < 3:
        raise CriterionInputError(
            "alpha_req: fewer than 3 positive eigenvalues in the fit range; the representation has collapsed"
        )
    x, y = torch.log(k), torch.log(lam)
    xc, yc = x - x.mean(), y - y.mean()
    slope = (xc * yc).sum() / (xc * xc).sum()
    resid = yc - slope * xc
    r2 = 1.0 - float((resid * resid).sum() / (yc * yc).sum()) if float((yc * yc).sum()) > 0 else 1.0
    return {"alpha": float(-slope), "r2": r2, "k_min": k_min, "k_max": k_max}
