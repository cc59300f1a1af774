"""LiDAR and alpha-ReQ against closed forms and scikit-learn's LDA."""

import math

import numpy as np
import pytest
import torch

from e2mc.errors import CriterionInputError
from e2mc.metrics import alpha_req, covariance_spectrum, lidar


def _entropy_rank(vals, eps=1e-7):
    p = np.asarray(vals, dtype=np.float64) / np.sum(vals) + eps
    return math.exp(-np.sum(p * np.log(p)))


def test_lidar_closed_form_rank_of_constructed_classes():
    """6 surrogate classes at +-a e_1..e_3 (between-class scatter 2a^2/5 on 3 axes), 12 views each at
    +-s e_1..e_6 (within-class scatter exactly 2 s^2 / 11 I): the LDA matrix has 3 equal eigenvalues."""
    d, a, s, delta = 6, 3.0, 0.5, 1e-4
    eye = torch.eye(d, dtype=torch.float64)
    centres = torch.cat([a * eye[:3], -a * eye[:3]])  # (6, d)
    offsets = torch.cat([s * eye, -s * eye])  # (12, d)
    z = (centres[:, None, :] + offsets[None]).reshape(-1, d)
    lam = (2 * a * a / 5) / (2 * s * s / 11 + delta)
    expected = _entropy_rank([lam, lam, lam, 0.0, 0.0, 0.0])
    assert lidar(z, n_views=12, delta=delta) == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(3.0, rel=1e-5)


def test_lidar_matches_sklearn_lda_spectrum():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    g = torch.Generator().manual_seed(0)
    n, q, d = 9, 7, 5
    means = torch.randn(n, 1, d, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64
    )
    z = (
        means
        + torch.randn(n, q, d, generator=g, dtype=torch.float64)
        @ torch.randn(d, d, generator=g, dtype=torch.float64)
        * 0.3
    ).reshape(-1, d)
    labels = np.repeat(np.arange(n), q)
    lda = LinearDiscriminantAnalysis(solver="eigen").fit(z.numpy(), labels)
    ratios = lda.explained_variance_ratio_  # generalized eigenvalues of (S_b, S_w), normalised
    # the scatter normalisations differ from LiDAR's only by constants, so the normalised spectra agree
    assert lidar(z, n_views=q, delta=0.0, eps=0.0) == pytest.approx(_entropy_rank(ratios, eps=0.0), rel=1e-8)


def test_lidar_input_checks():
    with pytest.raises(CriterionInputError, match="n_views"):
        lidar(torch.randn(10, 3), n_views=3)


def _power_law_features(n, d, alpha, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, d, generator=g, dtype=torch.float64)
    basis, _ = torch.linalg.qr(raw - raw.mean(dim=0))  # orthonormal, centred columns
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.arange(1, d + 1, dtype=torch.float64).pow(-alpha)
    return math.sqrt(n - 1) * basis * lam.sqrt() @ rot.T, lam


@pytest.mark.parametrize("alpha", [0.7, 1.0, 2.3])
def test_alpha_req_recovers_a_known_power_law(alpha):
    z, lam = _power_law_features(200, 40, alpha)
    torch.testing.assert_close(covariance_spectrum(z), lam, rtol=1e-9, atol=1e-12)
    out = alpha_req(z)
    assert out["alpha"] == pytest.approx(alpha, rel=1e-9) and out["r2"] == pytest.approx(1.0, abs=1e-12)
    assert (out["k_min"], out["k_max"]) == (2, 20)
    assert alpha_req(z.float(), fit_range=(1, 40))["alpha"] == pytest.approx(alpha, rel=1e-3)


def test_alpha_req_fit_range_is_fixed_by_shape():
    a, _ = _power_law_features(100, 30, 1.0, seed=1)
    b = torch.randn(100, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert (alpha_req(a)["k_min"], alpha_req(a)["k_max"]) == (alpha_req(b)["k_min"], alpha_req(b)["k_max"]) == (2, 15)
    with pytest.raises(CriterionInputError, match="fit range"):
        alpha_req(a, fit_range=(5, 6))


def test_evaluate_lidar_and_alpha_req_protocols(tmp_path):
    """The protocols on a real (tiny) model and the digits data: seeded, bounded, both heads."""
    from e2mc.evaluation.api import evaluate
    from e2mc.models.checkpoints import load_model

    torch.manual_seed(0)
    model, _ = load_model("random:resnet_mini:8-16-32", method="vicreg", head_sizes={"projector": (16, 16)})
    protocols = ("lidar", "alpha_req")
    kw = {
        "eval.seeds": [3],
        "eval.cache_dir": str(tmp_path),
        "eval.device": "cpu",
        "eval.image_size": 16,
        "eval.lidar.images": 20,
        "eval.lidar.views": 4,
    }
    a = evaluate(model, "digits", protocols, kw)
    b = evaluate(model, "digits", protocols, kw)
    assert a["lidar"] == b["lidar"]  # same images, same augmentations
    assert a["lidar"]["images"] == 20 and a["lidar"]["views"] == 4
    assert 1.0 <= a["lidar"]["backbone"] <= 19 and 1.0 <= a["lidar"]["projector"] <= 16
    assert a["alpha_req"]["ranks_backbone"] == "2-16" and 0 < a["alpha_req"]["r2_backbone"] <= 1
    c = evaluate(model, "digits", protocols, {**kw, "eval.seeds": [4]})
    assert c["lidar"]["backbone"] != a["lidar"]["backbone"]  # another draw of images and views
