import math

import pytest
import torch

from e2mc import metrics
from e2mc.errors import CriterionInputError


def _with_singular_values(s, n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(len(s), len(s), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


def test_rankme_equal_singular_values_gives_rank():
    for r in (1, 3, 7):
        z = _with_singular_values([2.5] * r + [0.0] * (10 - r))
        assert metrics.rankme(z) == pytest.approx(r, rel=1e-4)


def test_rankme_matches_hand_formula():
    s = [4.0, 2.0, 1.0, 0.5]
    z = _with_singular_values(s)
    p = [x / sum(s) + 1e-7 for x in s]
    expected = math.exp(-sum(q * math.log(q) for q in p))
    assert metrics.rankme(z) == pytest.approx(expected, rel=1e-9)
    assert metrics.singular_values(z).tolist() == pytest.approx(s, rel=1e-9)


def test_rankme_is_uncentred():
    # a constant offset makes the uncentred matrix rank 1 dominated; centring would change it
    z = torch.randn(100, 5, dtype=torch.float64) * 1e-3 + 10.0
    assert metrics.rankme(z) < 1.1


def test_uniformity_and_alignment_vs_pair_loops():
    torch.manual_seed(0)
    z = torch.randn(12, 4, dtype=torch.float64)
    x = z / z.norm(dim=1, keepdim=True)
    terms = [math.exp(-2 * float((x[i] - x[j]).pow(2).sum())) for i in range(12) for j in range(i + 1, 12)]
    assert metrics.uniformity(z) == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-10)
    z2 = z + 0.1 * torch.randn(12, 4, dtype=torch.float64)
    y = z2 / z2.norm(dim=1, keepdim=True)
    naive = sum(float((x[i] - y[i]).norm()) ** 2 for i in range(12)) / 12
    assert metrics.alignment(z, z2) == pytest.approx(naive, rel=1e-10)


def test_bad_inputs():
    with pytest.raises(CriterionInputError, match="NaN"):
        metrics.rankme(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(CriterionInputError, match="2-D"):
        metrics.rankme(torch.randn(5))
    with pytest.raises(CriterionInputError, match="collapsed"):
        metrics.rankme(torch.zeros(4, 3))
    with pytest.raises(CriterionInputError, match="same shape"):
        metrics.alignment(torch.randn(4, 3), torch.randn(5, 3))


def test_marginal_entropy_and_covariance():
    torch.manual_seed(0)
    # logit of uniform samples -> sigmoid gives U(0,1): entropy ~ 0; independent -> covariance ~ 0
    u = torch.rand(4096, 3).clamp(1e-6, 1 - 1e-6)
    z = torch.log(u) - torch.log1p(-u)
    assert metrics.marginal_entropy(z, "sigmoid") == pytest.approx(0.0, abs=0.03)
    assert metrics.e2mc_covariance(z, "sigmoid") < 1e-4
    # perfectly correlated columns: off-diagonal cov = var(U) = 1/12 per pair, two pairs, over D=2
    zz = torch.cat([z[:, :1], z[:, :1]], dim=1)
    assert metrics.e2mc_covariance(zz, "sigmoid") == pytest.approx(2 * (1 / 12) ** 2 / 2, rel=0.05)
