import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from e2mc.criteria import (
    ADDONS,
    E2MC,
    MMCRAddon,
    NoAddon,
    UniformityAddon,
    VCAddon,
    build_addon,
)
from e2mc.errors import ConfigError, CriterionInputError


def _views(seed=0, n=10, d=6):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, d)) * 0.5 for _ in range(2)]


def test_vc_matches_numpy():
    views = _views()
    for normalize in (False, True):
        zs = [v / np.linalg.norm(v, axis=1, keepdims=True) if normalize else v for v in views]
        var = np.mean([np.mean(np.maximum(0, 1 - np.sqrt(z.var(0, ddof=1) + 1e-4))) for z in zs])
        cov = 0.0
        for z in zs:
            c = np.cov(z, rowvar=False)
            cov += (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / z.shape[1]
        out = VCAddon(var_weight=2.0, cov_weight=3.0, normalize=normalize)([torch.tensor(v) for v in views])
        assert float(out["variance"]) == pytest.approx(var, rel=1e-5)
        assert float(out["covariance"]) == pytest.approx(cov, rel=1e-5)
        assert float(out["loss"]) == pytest.approx(2 * var + 3 * cov, rel=1e-5)


def test_uniformity_matches_scipy_and_has_finite_grad_at_ties():
    views = _views(1)
    ref = []
    for v in views:
        vn = v / np.linalg.norm(v, axis=1, keepdims=True)
        ref.append(math.log(np.mean(np.exp(-2.0 * pdist(vn, "sqeuclidean")))))
    out = UniformityAddon(weight=0.5)([torch.tensor(v) for v in views])
    assert float(out["uniformity"]) == pytest.approx(np.mean(ref), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(0.5 * np.mean(ref), rel=1e-5)
    x = torch.tensor(views[0], requires_grad=True)
    with torch.no_grad():
        x[1] = x[0]  # a duplicate row: zero distance
    UniformityAddon()([x])["loss"].backward()
    assert torch.isfinite(x.grad).all()


def test_mmcr_matches_numpy_nuclear_norm():
    views = _views(2)
    cent = np.mean([v / np.linalg.norm(v, axis=1, keepdims=True) for v in views], axis=0)
    nuc = np.linalg.norm(cent, ord="nuc")
    out = MMCRAddon(weight=2.0)([torch.tensor(v) for v in views])
    assert float(out["nuclear_norm"]) == pytest.approx(nuc, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(-2.0 * nuc, rel=1e-6)


def test_no_addon_is_zero_and_adds_to_a_loss():
    z = torch.randn(4, 3, requires_grad=True)
    out = NoAddon()([z])
    assert float(out["loss"]) == 0.0 and out["loss"].dtype == torch.float32
    (z.sum() + out["loss"]).backward()
    assert torch.equal(z.grad, torch.ones(4, 3))
    assert float(NoAddon()()["loss"]) == 0.0


def test_registry():
    assert set(ADDONS) == {"e2mc", "vc", "uniformity", "mmcr", "none"}
    assert isinstance(build_addon("E2MC"), E2MC)
    assert isinstance(build_addon("mmcr", weight=0.1), MMCRAddon)
    with pytest.raises(ConfigError, match="use one of") as info:
        build_addon("barlow")
    assert "uniformity" in str(info.value)
    with pytest.raises(ConfigError, match="bad arguments"):
        build_addon("vc", nonsense=1)


@pytest.mark.parametrize("cls", [VCAddon, UniformityAddon, MMCRAddon])
def test_addons_validate_input(cls):
    with pytest.raises(CriterionInputError, match="same shape"):
        cls()([torch.randn(8, 3), torch.randn(7, 3)])
    with pytest.raises(CriterionInputError, match="NaN"):
        cls()([torch.full((8, 3), float("nan"))])


@pytest.mark.parametrize("name", ["vc", "uniformity", "mmcr", "e2mc"])
def test_addons_fp32_under_autocast(name):
    z = [torch.randn(16, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = build_addon(name)(z)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(v.grad.float()).all() for v in z)
