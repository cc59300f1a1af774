"""DINOLoss and the centre update against a numpy transcription of main_dino.py's equations."""

import numpy as np
import pytest
import torch

from e2mc.criteria.dino import DINOLoss, batch_center, update_center
from e2mc.errors import CriterionInputError


def _np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_dino(student, teacher, center, t_temp, s_temp):
    """DINOLoss.forward written out: student crops / s_temp; softmax((t - c) / t_temp) of the two
    global crops; cross-entropy over every pair but the same view; mean of the pair means."""
    qs = [_np_softmax((t - center) / t_temp) for t in teacher]
    total, n = 0.0, 0
    for iq, q in enumerate(qs):
        for v, s in enumerate(student):
            if v == iq:
                continue
            x = s / s_temp
            logp = x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
            total += np.sum(-q * logp, axis=-1).mean()
            n += 1
    return total / n


@pytest.mark.parametrize("crops", [2, 4, 10])
def test_loss_equals_the_numpy_transcription(crops):
    g = torch.Generator().manual_seed(crops)
    s = [torch.randn(6, 32, generator=g, dtype=torch.float64) * 3 for _ in range(crops)]
    t = [torch.randn(6, 32, generator=g, dtype=torch.float64) * 3 for _ in range(2)]
    c = torch.randn(1, 32, generator=g, dtype=torch.float64)
    got = DINOLoss(student_temp=0.1)(s, t, c, 0.04)["loss"]
    want = _np_dino([x.numpy() for x in s], [x.numpy() for x in t], c.numpy(), 0.04, 0.1)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_gradient_flows_to_the_student_only():
    s = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]
    t = [torch.randn(4, 8, requires_grad=True) for _ in range(2)]
    DINOLoss()(s, t, torch.zeros(1, 8), 0.07)["loss"].backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)


def test_center_update_is_the_official_ema_of_the_batch_mean():
    g = torch.Generator().manual_seed(1)
    t = [torch.randn(5, 16, generator=g) for _ in range(2)]
    c0 = torch.randn(1, 16, generator=g)
    c = c0.clone()
    update_center(c, t, 0.9)
    t_np = np.concatenate([x.numpy() for x in t])
    want = c0.numpy() * 0.9 + (t_np.sum(0, keepdims=True) / len(t_np)) * (1 - 0.9)
    np.testing.assert_allclose(c.numpy(), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(batch_center(t).numpy(), t_np.mean(0, keepdims=True), rtol=1e-6)


def test_bad_inputs_are_one_line_errors():
    s, t = [torch.randn(4, 8) for _ in range(3)], [torch.randn(4, 8) for _ in range(2)]
    with pytest.raises(CriterionInputError, match="exactly 2 views"):
        DINOLoss()(s, t[:1], torch.zeros(1, 8), 0.04)
    with pytest.raises(CriterionInputError, match="centre is"):
        DINOLoss()(s, t, torch.zeros(1, 9), 0.04)
    with pytest.raises(CriterionInputError, match="width"):
        DINOLoss()([torch.randn(4, 9)] * 3, t, torch.zeros(1, 8), 0.04)
