"""KoLeo against facebookresearch/dinov2's ``KoLeoLoss`` (dinov2 b8931f7, run by
tests/official/check/koleo_official.py on the same seeded inputs: loss -0.17390766739845276,
``x.grad`` abs-sum 0.8813852071762085; with two equal rows 1.9285829067230225)."""

import pytest
import torch

from e2mc.criteria.koleo import KoLeoLoss, koleo
from e2mc.errors import CriterionInputError


def _inputs():
    torch.manual_seed(0)
    x = torch.randn(16, 32, requires_grad=True)
    y = torch.randn(16, 32)
    y[7] = y[3]
    return x, y


def test_equals_the_official_loss_and_gradient():
    x, y = _inputs()
    loss = koleo(x)
    loss.backward()
    assert loss.item() == pytest.approx(-0.17390766739845276, abs=1e-6)
    assert x.grad.abs().sum().item() == pytest.approx(0.8813852071762085, rel=1e-5)
    assert koleo(y).item() == pytest.approx(1.9285829067230225, abs=1e-5)  # a duplicate: log(1e-8 * sqrt(D))


def test_sums_views_each_alone_and_refuses_bad_input():
    x, y = _inputs()
    out = KoLeoLoss()([x.detach(), y])
    assert out["loss"].item() == pytest.approx(koleo(x.detach()).item() + koleo(y).item(), abs=1e-6)
    assert not out["koleo"].requires_grad
    with pytest.raises(CriterionInputError, match="at least 2 samples"):
        KoLeoLoss()([torch.randn(1, 4)])
    with pytest.raises(CriterionInputError):
        KoLeoLoss()(torch.randn(4, 4))


def test_dino_adds_koleo_of_each_global_crop_with_its_weight():
    """``method.koleo_weight``: DINO's loss + weight * (KoLeo of global crop 1's backbone features +
    of crop 2's), as DINOv2's ssl_meta_arch.py; 0 (the default) leaves DINO's loss as it was."""
    from e2mc.config import load_config
    from e2mc.methods import METHODS, StepContext
    from e2mc.models.model import SSLModel

    dino, base = (
        METHODS["dino"],
        ["method.name=dino", "addon.name=none", "model.head_sizes={hidden: 32, bottleneck: 8, out: 64}"],
    )
    torch.manual_seed(0)
    m = SSLModel.build("dino", "resnet_mini:8-8-16", hidden=32, bottleneck=8, out=64)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8) for _ in range(2)]
    out = m(views)
    terms = {}
    for w in (0.0, 0.1):
        c = load_config(None, [*base, f"method.koleo_weight={w}"])
        state = dino.build_state(c, m, 1, 4, print)
        terms[w] = dino.compute_loss(out, dino.build_criterion(c), dino.build_addon(c), StepContext(m, state, 0, c, 1))
    want = koleo(out["features"][0]) + koleo(out["features"][1])
    assert not any("koleo" in k for k in terms[0.0]) and any("koleo" in k for k in terms[0.1])
    assert terms[0.1]["loss"].item() == pytest.approx(terms[0.0]["loss"].item() + 0.1 * want.item(), rel=1e-6)
