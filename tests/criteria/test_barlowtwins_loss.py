"""BarlowTwinsLoss against a numpy transcription of the paper's equation (Zbontar et al. 2021, eq. 1-2):
``L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2`` with
``C_ij = sum_b zA_bi zB_bj / (sqrt(sum_b zA_bi^2) sqrt(sum_b zB_bj^2))`` over mean-centred
embeddings (the official code: batch-normalised, divided by N; equal up to BN's eps)."""

import numpy as np
import pytest
import torch
from torch import nn

from e2mc.criteria.barlowtwins import BarlowTwinsLoss, batch_norm, off_diagonal
from e2mc.errors import CriterionInputError


def paper_loss(za: np.ndarray, zb: np.ndarray, lambd: float, eps: float = 1e-5):
    """Eq. 1-2 in float64 loops over the matrix; BN's eps kept so the values agree to float32 rounding."""
    n, d = za.shape
    a = za - za.mean(0)
    b = zb - zb.mean(0)
    sa = np.sqrt((a**2).sum(0) + n * eps)
    sb = np.sqrt((b**2).sum(0) + n * eps)
    on = off = 0.0
    for i in range(d):
        for j in range(d):
            cij = (a[:, i] * b[:, j]).sum() / (sa[i] * sb[j])
            if i == j:
                on += (1 - cij) ** 2
            else:
                off += cij**2
    return on + lambd * off, on, off


@pytest.mark.parametrize("n, d, lambd", [(16, 8, 0.0051), (7, 12, 0.5), (64, 4, 0.0)])
def test_loss_equals_the_papers_equation(n, d, lambd):
    g = torch.Generator().manual_seed(n * d)
    z1, z2 = torch.randn(n, d, generator=g) * 3 + 1, torch.randn(n, d, generator=g) * 0.5
    z2 = z2 + 0.7 * z1  # correlated views: the on-diagonal term is not ~1
    out = BarlowTwinsLoss(lambd=lambd)([z1, z2])
    loss, on, off = paper_loss(z1.double().numpy(), z2.double().numpy(), lambd)
    assert float(out["loss"]) == pytest.approx(loss, rel=1e-5)
    assert float(out["on_diag"]) == pytest.approx(on, rel=1e-5)
    assert float(out["off_diag"]) == pytest.approx(off, rel=1e-5)
    assert out["loss"].requires_grad is False and not out["on_diag"].requires_grad


def test_gradient_equals_the_equations_gradient():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(10, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(10, 5, generator=g, dtype=torch.float64, requires_grad=True)
    crit = BarlowTwinsLoss(lambd=0.1)
    # the criterion computes in float32; compare its gradient with a float64 finite difference of eq. 1-2
    loss = crit([z1.float(), z2.float()])["loss"]
    g1, g2 = torch.autograd.grad(loss, [z1, z2])
    h = 1e-6
    for z, grad, k in ((z1, g1, 0), (z2, g2, 1)):
        for idx in [(0, 0), (3, 2), (9, 4)]:
            up, down = z.detach().clone(), z.detach().clone()
            up[idx] += h
            down[idx] -= h
            pair = [z1.detach().numpy(), z2.detach().numpy()]
            pair[k] = up.numpy()
            f_up = paper_loss(*pair, 0.1)[0]
            pair[k] = down.numpy()
            f_down = paper_loss(*pair, 0.1)[0]
            assert float(grad[idx]) == pytest.approx((f_up - f_down) / (2 * h), rel=2e-3, abs=1e-5)


def test_bn_module_statistics_move_as_batchnorm1d():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g) + 2
    ours, ref = nn.BatchNorm1d(6, affine=False), nn.BatchNorm1d(6, affine=False)
    out = BarlowTwinsLoss()([z1, z2], bn=ours)
    c = ref(z1).T @ ref(z2) / 12  # main.py's forward: bn(z1).T @ bn(z2), divided by the batch
    want = (torch.diagonal(c) - 1).pow(2).sum() + 0.0051 * off_diagonal(c).pow(2).sum()
    assert torch.allclose(out["loss"], want, rtol=1e-6)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert int(ours.num_batches_tracked) == 2  # once per view, as main.py's two bn calls
    ours.eval(), ref.eval()  # eval mode: the running statistics normalise, nothing moves
    before = ours.running_mean.clone()
    assert torch.allclose(batch_norm(z1, ours), ref(z1), atol=1e-6)
    assert torch.equal(ours.running_mean, before) and int(ours.num_batches_tracked) == 2


def test_off_diagonal_is_every_entry_but_the_diagonal():
    c = torch.arange(16.0).view(4, 4)
    assert sorted(off_diagonal(c).tolist()) == sorted(
        v for i, r in enumerate(c.tolist()) for j, v in enumerate(r) if i != j
    )


def test_float32_inside_autocast():
    z = [torch.randn(16, 8).bfloat16(), torch.randn(16, 8).bfloat16()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = BarlowTwinsLoss()(z)
    assert out["loss"].dtype == torch.float32
    ref = BarlowTwinsLoss()([v.float() for v in z])
    assert torch.allclose(out["loss"], ref["loss"])


@pytest.mark.parametrize(
    "views, match",
    [
        ([torch.randn(8, 4)], "exactly 2 views"),
        ([torch.randn(8, 4), torch.randn(8, 5)], "same shape"),
        ([torch.randn(8), torch.randn(8)], "2-D"),
        (torch.randn(2, 8, 4), "list of per-view"),
    ],
)
def test_bad_views_are_one_line_errors(views, match):
    with pytest.raises(CriterionInputError, match=match) as info:
        BarlowTwinsLoss()(views)
    assert "\n" not in str(info.value)
