"""The fused E2MC / entropy / nuclear-norm kernels against plain-autograd references."""

import math

import pytest
import torch

from e2mc.criteria import E2MC, m_spacing_entropy
from e2mc.criteria.addons import MMCRAddon, nuclear_norm
from e2mc.criteria.entropy import check_views
from e2mc.criteria.kernels import sort_columns
from e2mc.errors import CriterionInputError

_REF_TRANSFORMS = {
    "sigmoid": torch.sigmoid,
    "gaussian_cdf": lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2))),
    "identity": lambda x: x,
}


def _autograd_e2mc(views, transform, w_ent=10.0, w_cov=1.0, eps=1e-8):
    """E2MC written with torch.sort and autograd only (centre first, D x D covariance)."""
    ents, covs = [], []
    for z in views:
        n, d = z.shape
        m = int(round(math.sqrt(n)))
        u = _REF_TRANSFORMS[transform](z.double())
        u = u - u.mean(0)
        s = torch.sort(u, dim=0).values
        ents.append(torch.log((n + 1) / m * (s[m:] - s[:-m]) + eps).mean())
        c = u.t() @ u / (n - 1)
        covs.append(((c * c).sum() - (c.diagonal() ** 2).sum()) / d)
    return w_cov * torch.stack(covs).sum() - w_ent * torch.stack(ents).mean()


@pytest.mark.parametrize("transform", sorted(_REF_TRANSFORMS))
@pytest.mark.parametrize("n, d", [(40, 6), (9, 30)])  # covariance path and Gram path
def test_e2mc_gradient_matches_autograd_reference(transform, n, d):
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(n, d, generator=g) for _ in range(3)]
    a = [v.clone().requires_grad_() for v in z]
    b = [v.double().requires_grad_() for v in z]
    out = E2MC(transform=transform)(a)
    ref = _autograd_e2mc(b, transform)
    assert float(out["loss"].detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-5)
    out["loss"].backward()
    ref.backward()
    for x, y in zip(a, b):
        assert x.grad.dtype == torch.float32
        torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-4, atol=1e-5)


def test_m_spacing_entropy_gradient_matches_torch_sort():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 7, generator=g)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(7, generator=g)
    (m_spacing_entropy(a, m=5) * w).sum().backward()
    s = torch.sort(b, dim=0).values
    (torch.log(51 / 5 * (s[5:] - s[:-5]) + 1e-8).mean(0) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_sort_columns_values_and_positions():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(33, 5, generator=g).round(decimals=1)  # ties, negatives
    x[0, 0], x[1, 0], x[2, 1] = -0.0, 0.0, float("-1e-40")  # signed zeros, a denormal
    y = torch.rand(33, 3, generator=g)
    vals, idx = sort_columns([x, y])
    cols = torch.cat([x.t(), y.t()])
    assert idx.dtype == torch.int64 and vals.shape == (8, 33)
    assert torch.equal(vals, torch.sort(cols, dim=1).values)
    assert torch.equal(torch.gather(cols, 1, idx), vals)
    assert torch.equal(idx.sort(dim=1).values, torch.arange(33).expand(8, 33))
    v2, _ = sort_columns([y], nonneg=True)
    assert torch.equal(v2, torch.sort(y.t(), dim=1).values)


def test_finite_check_is_exact_when_the_sum_overflows():
    big = torch.full((4, 3), 3e38)  # finite, but the sum overflows float32
    check_views([big, big], "test")
    with pytest.raises(CriterionInputError, match="NaN or Inf"):
        check_views([big, torch.tensor([[float("nan")] * 3] * 4)], "test")


@pytest.mark.parametrize("shape", [(5, 11), (11, 5), (6, 6)])
def test_nuclear_norm_gradient_matches_matrix_norm(shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    na, nb = nuclear_norm(a), torch.linalg.matrix_norm(b, ord="nuc")
    assert float(na.detach()) == pytest.approx(float(nb.detach()), rel=1e-12)
    na.backward()
    nb.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10)


def test_nuclear_norm_gradient_finite_at_rank_deficiency():
    x = torch.zeros(4, 9)
    x[0, 0], x[1, 0] = 1.0, 1.0  # rank 1, repeated zero singular values
    x.requires_grad_()
    n = nuclear_norm(x)
    assert float(n.detach()) == pytest.approx(math.sqrt(2), rel=1e-6)
    n.backward()
    assert torch.isfinite(x.grad).all()
    z = torch.ones(6, 4, requires_grad=True)  # identical rows: MMCR of collapsed embeddings
    MMCRAddon()([z, z])["loss"].backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    "transform, lo, hi, sf",
    [
        ("sigmoid", 17.0, 30.0, lambda v: __import__("scipy.special").special.expit(-v)),
        ("gaussian_cdf", 5.6, 8.0, lambda v: __import__("scipy.stats").stats.norm.sf(v)),
    ],
)
def test_e2mc_spacings_exact_where_float32_transform_saturates(transform, lo, hi, sf):
    """Past |z| ~ 16.6 (sigmoid) / 5.4 (normal CDF) float32 T(z) is exactly 1.0, so a naive
    estimator sees only ties; the kernel must give scipy's float64 spacings there."""
    import numpy as np

    n, m = 64, 8
    g = torch.Generator().manual_seed(4)
    z = lo + (hi - lo) * torch.rand(n, 3, generator=g)
    assert bool((_REF_TRANSFORMS[transform](z) == 1.0).all())  # fully saturated in float32
    out = E2MC(transform=transform, m=m, gather=False, entropy_weight=1.0, cov_weight=0.0)([z])
    s = np.sort(z.double().numpy(), axis=0)
    tail = sf(s)  # 1 - T(z), precise in float64
    ref = np.log((n + 1) / m * (tail[:-m] - tail[m:]) + 1e-8).mean(axis=0).mean()
    assert float(out["entropy"]) == pytest.approx(ref, abs=2e-3)
    assert float(out["tied"]) == 0.0 and float(out["saturated"]) == 1.0
    # the negative tail is the mirror image
    out_neg = E2MC(transform=transform, m=m, gather=False)([-z])
    assert float(out_neg["entropy"]) == pytest.approx(ref, abs=2e-3)


def test_e2mc_reports_ties():
    z = torch.zeros(16, 4)
    z[:8] = 1.0  # two values per column: every spacing within a block is zero
    out = E2MC(transform="sigmoid", m=4, gather=False)([z])
    # 12 spacings per column, of which only those crossing the two blocks (4) are non-zero
    assert float(out["tied"]) == pytest.approx(8 / 12)
    assert float(out["saturated"]) == 0.0


@pytest.mark.parametrize("transform", ["sigmoid", "gaussian_cdf"])
def test_e2mc_gradient_finite_and_signed_in_saturated_tail(transform):
    """The slope at saturated values comes from the small side of the CDF: still positive."""
    z = (
        torch.linspace(20.0, 40.0, 32).unsqueeze(1).repeat(1, 2)
        if transform == "sigmoid"
        else torch.linspace(6.0, 9.0, 32).unsqueeze(1).repeat(1, 2)
    )
    z = z.clone().requires_grad_()
    E2MC(transform=transform, m=4, gather=False, cov_weight=0.0)([z])["loss"].backward()
    assert torch.isfinite(z.grad).all() and bool((z.grad != 0).any())


@pytest.mark.parametrize("name", ["sigmoid", "gaussian_cdf"])
@pytest.mark.parametrize("m", [1, 3, 9])
def test_box_spacings_match_float64_differences(name, m):
    """Spacings across 0 (the band where the indicator jumps), signed zeros, ties and all-negative
    / all-positive rows, against T(hi) - T(lo) in float64."""
    from e2mc.criteria.kernels import box_spacings

    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 10, generator=g).round(decimals=1)
    x[0, :3] = torch.tensor([-0.0, 0.0, -0.0])
    x[1] = x[1].abs() + 0.1  # no negatives
    x[2] = -x[2].abs() - 0.1  # no non-negatives
    vals = torch.sort(x, dim=1).values
    diff, _ = box_spacings(name, vals, m)
    ref_t = _REF_TRANSFORMS[name](vals.double())
    torch.testing.assert_close(diff.double(), ref_t[:, m:] - ref_t[:, :-m], rtol=1e-5, atol=1e-6)
