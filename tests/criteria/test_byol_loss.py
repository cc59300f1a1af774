"""BYOLLoss against the paper's equations written out in numpy (Grill et al. 2020, eq. 2 and the
symmetrised loss), on the same tensors."""

import numpy as np
import pytest
import torch

from e2mc.criteria import BYOLLoss
from e2mc.errors import CriterionInputError


def _np_byol(p1, p2, t1, t2):
    """L = ||q̄ - z̄'||² per sample (q̄, z̄' the L2-normalised prediction and target projection) for
    (view 1 -> view 2) plus the swapped pair, averaged over the batch."""

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def pair(q, z):
        return np.sum((unit(q) - unit(z)) ** 2, axis=1)

    return np.mean(pair(p1, t2) + pair(p2, t1))


def test_byol_matches_the_paper_in_numpy():
    rng = np.random.default_rng(0)
    p1, p2, t1, t2 = (rng.normal(size=(10, 6)) * s for s in (0.3, 2.0, 1.0, 5.0))
    out = BYOLLoss()([torch.tensor(p1), torch.tensor(p2)], [torch.tensor(t1), torch.tensor(t2)])
    ref = _np_byol(p1, p2, t1, t2)
    assert float(out["loss"]) == pytest.approx(ref, rel=1e-6)
    cos = np.mean([np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(p1, t2)])
    cos += np.mean([np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(p2, t1)])
    assert float(out["loss"]) == pytest.approx(4 - 2 * cos, rel=1e-6)  # 2 - 2 cos per pair
    assert float(out["cos"]) == pytest.approx(cos / 2, rel=1e-6)
    same = BYOLLoss()([torch.tensor(t2), torch.tensor(t1)], [torch.tensor(t1), torch.tensor(t2)])
    assert float(same["loss"]) == pytest.approx(0.0, abs=1e-6)


def test_byol_gradient_reaches_the_predictions_only():
    g = torch.Generator().manual_seed(0)
    p = [torch.randn(8, 4, generator=g, requires_grad=True) for _ in range(2)]
    t = [torch.randn(8, 4, generator=g, requires_grad=True) for _ in range(2)]
    BYOLLoss()(p, t)["loss"].backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in p)
    assert all(x.grad is None for x in t)  # stop-gradient on the target
    from e2mc.config import load_config
    from e2mc.methods import METHODS

    assert isinstance(METHODS["byol"].build_criterion(load_config(None, ["method.name=byol"])), BYOLLoss)


def test_byol_bad_inputs_are_one_line():
    p = [torch.randn(4, 3)] * 2
    with pytest.raises(CriterionInputError, match="same shape"):
        BYOLLoss()(p, [torch.randn(4, 5)] * 2)
    with pytest.raises(CriterionInputError, match="exactly 2 views"):
        BYOLLoss()(p * 2, p * 2)
