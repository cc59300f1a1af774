import math

import pytest
import torch

from e2mc.criteria import E2MC, build_addon
from e2mc.errors import ConfigError, CriterionInputError


def _hand_e2mc(views, w_ent, w_cov, transform, eps=1e-8):
    """The paper's formula written out with plain Python loops."""
    ents, covs = [], []
    for z in views:
        z = z.tolist()
        n, d = len(z), len(z[0])
        m = int(round(math.sqrt(n)))
        u = [[transform(v) for v in row] for row in z]
        means = [sum(u[i][j] for i in range(n)) / n for j in range(d)]
        u = [[u[i][j] - means[j] for j in range(d)] for i in range(n)]
        h = []
        for j in range(d):
            col = sorted(u[i][j] for i in range(n))
            h.append(sum(math.log((n + 1) / m * (col[i + m] - col[i]) + eps) for i in range(n - m)) / (n - m))
        ents.append(sum(h) / d)
        off = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    c = sum(u[i][a] * u[i][b] for i in range(n)) / (n - 1)
                    off += c * c
        covs.append(off / d)
    ent, cov = sum(ents) / len(ents), sum(covs)
    return w_cov * cov - w_ent * ent, ent, cov


@pytest.mark.parametrize(
    "name, fn",
    [
        ("sigmoid", lambda v: 1 / (1 + math.exp(-v))),
        ("gaussian_cdf", lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))),
        ("identity", lambda v: v),
    ],
)
def test_matches_hand_formula(name, fn):
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(9, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    views[1][:, 2] = views[1][:, 0] * 0.8 + 0.1 * views[1][:, 1]  # some correlation
    out = E2MC(transform=name, entropy_weight=10.0, cov_weight=2.0)(views)
    loss, ent, cov = _hand_e2mc(views, 10.0, 2.0, fn)
    assert float(out["entropy"]) == pytest.approx(ent, abs=1e-5)
    assert float(out["covariance"]) == pytest.approx(cov, rel=1e-4, abs=1e-7)
    assert float(out["loss"]) == pytest.approx(loss, rel=1e-4, abs=1e-5)
    assert float(out["m"]) == 3
    assert not out["entropy"].requires_grad and not out["covariance"].requires_grad


def test_view_reduction_options_and_real_n():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(16, 4, generator=g) for _ in range(2)]
    per_view = [E2MC()([v]) for v in views]
    ms = E2MC(view_reduction=("mean", "sum"))(views)
    sm = E2MC(view_reduction=("sum", "mean"))(views)
    e = [float(p["entropy"]) for p in per_view]
    c = [float(p["covariance"]) for p in per_view]
    assert float(ms["entropy"]) == pytest.approx(sum(e) / 2, abs=1e-6)
    assert float(ms["covariance"]) == pytest.approx(sum(c), rel=1e-5)
    assert float(sm["entropy"]) == pytest.approx(sum(e), abs=1e-6)
    assert float(sm["covariance"]) == pytest.approx(sum(c) / 2, rel=1e-5)
    crit = E2MC()
    crit([v[:10] for v in views])  # a short last batch: m follows the real N
    assert crit.last_m == 3
    with pytest.raises(ConfigError, match="view_reduction"):
        E2MC(view_reduction=("mean", "max"))


def test_gradient_steps_raise_entropy_and_lower_covariance():
    torch.manual_seed(0)
    base = torch.randn(128, 1)
    # correlated and clumped: every dim nearly a copy of one variable, a third of points at 1
    x0 = base @ torch.ones(1, 8) + 0.1 * torch.randn(128, 8)
    x0[:40] = 1.0 + 0.001 * torch.randn(40, 8)
    z = [(x0 + 0.01 * torch.randn_like(x0)).clone().requires_grad_(), x0.clone().requires_grad_()]
    crit = E2MC(transform="sigmoid", entropy_weight=1.0, cov_weight=50.0)
    start = crit(z)
    opt = torch.optim.Adam(z, lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        crit(z)["loss"].backward()
        opt.step()
    end = crit(z)
    assert float(end["entropy"]) > float(start["entropy"]) + 0.5
    assert float(end["covariance"]) < 0.2 * float(start["covariance"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [False, True])
def test_low_precision_ties_give_finite_loss_and_grads(dtype, autocast):
    torch.manual_seed(0)
    # few levels -> many exact ties, whole columns constant too. Sizes matter for fp16: a zero
    # spacing gets d(loss)/d(u) ~ w_ent*(N+1)/(m*eps*D*(N-m)*views) in fp32, about 5e4 here
    # (fits fp16's 65504; at D=16, N=64 it would overflow fp16, not fp32/bf16).
    x = (torch.randn(256, 256) * 2).round() / 2
    x[:, 0] = 0.5
    z = [x.to(dtype).requires_grad_(), x.flip(0).to(dtype).requires_grad_()]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = E2MC(transform="gaussian_cdf")(z)
    assert out["loss"].dtype == torch.float32
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    for v in z:
        assert v.grad is not None and torch.isfinite(v.grad.float()).all()


def test_autocast_matches_fp32():
    torch.manual_seed(0)
    z = [torch.randn(32, 8), torch.randn(32, 8)]
    ref = E2MC()(z)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = E2MC()(z)["loss"]
    assert float(out) == pytest.approx(float(ref), rel=1e-6)


def test_registry_builds_e2mc():
    crit = build_addon("e2mc", transform="gaussian_cdf", entropy_weight=1.0, cov_weight=25.0)
    assert isinstance(crit, E2MC) and crit.cov_weight == 25.0


@pytest.mark.parametrize(
    "views, kw, match",
    [
        (torch.randn(8, 3), {}, "list"),
        ([], {}, "non-empty list"),
        ([torch.randn(8)], {}, "2-D"),
        ([torch.randn(8, 3), torch.randn(9, 3)], {}, "same shape"),
        ([torch.randn(8, 3), torch.randn(8, 4)], {}, "same shape"),
        ([torch.randn(4, 3)], {"m": 4}, "N=4 <= m=4"),
        ([torch.full((8, 3), float("nan"))], {}, "NaN or Inf"),
        ([torch.full((8, 3), float("inf"))], {}, "NaN or Inf"),
    ],
)
def test_bad_input(views, kw, match):
    with pytest.raises(CriterionInputError, match=match) as info:
        E2MC(**kw)(views)
    assert any(w in str(info.value) for w in ("use", "pass", "flatten", "check"))


def test_unknown_transform():
    with pytest.raises(ConfigError, match="use one of") as info:
        E2MC(transform="tanh")
    assert "gaussian_cdf" in str(info.value)
    with pytest.raises(ConfigError, match="m must be"):
        E2MC(m=0)
