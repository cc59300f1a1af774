import pytest
import torch

from e2mc.errors import DataError
from e2mc.evaluation.linear import MAX_ITER, fit_logistic, linear_probe, stratified_split


def _toy(seed=0, n=300, d=5, c=3, noise=0.8):
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return centers[y] + noise * torch.randn(n, d, generator=g), y


def test_linear_probe_close_to_sklearn():
    lm = pytest.importorskip("sklearn.linear_model")
    xtr, ytr = _toy(0)
    g = torch.Generator().manual_seed(1)
    xte, yte = _toy(0, n=200)  # same centres (same seed), new noise below
    xte = xte + 0.3 * torch.randn(xte.shape, generator=g)
    res = linear_probe(xtr, ytr, xte, yte)
    mean, std = xtr.mean(0), xtr.std(0)
    ref = lm.LogisticRegression(max_iter=2000).fit(((xtr - mean) / std).numpy(), ytr.numpy())
    ref_acc = float((ref.predict(((xte - mean) / std).numpy()) == yte.numpy()).mean())
    assert abs(res["top1"] - ref_acc) <= 0.03
    assert res["weight_decay"] in res["val_top1_per_weight_decay"]


def test_fit_logistic_matches_sklearn_coefficients():
    lm = pytest.importorskip("sklearn.linear_model")
    x, y = _toy(2, n=200, noise=3.0)
    wd = 1e-2
    w, b = fit_logistic(x, y, 3, [wd, 1.0], max_iter=500)
    # sklearn: C * sum CE + 0.5 ||W||^2  <=>  mean CE + 0.5 * wd ||W||^2 with C = 1 / (wd * N)
    ref = lm.LogisticRegression(C=1.0 / (wd * len(y)), max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
    probs = torch.softmax(x @ w[0] + b[0], dim=1)
    assert probs.numpy() == pytest.approx(ref.predict_proba(x.numpy()), abs=2e-3)


def test_selection_never_uses_test_labels():
    xtr, ytr = _toy(3)
    xte, yte = _toy(3, n=100)
    a = linear_probe(xtr, ytr, xte, yte, seed=0)
    b = linear_probe(xtr, ytr, xte, yte[torch.randperm(100)], seed=0)
    assert a["weight_decay"] == b["weight_decay"]
    assert a["val_top1_per_weight_decay"] == b["val_top1_per_weight_decay"]
    assert b["top1"] < a["top1"]  # only the final score sees the test labels


def test_stratified_split_is_seeded_and_stratified():
    y = torch.arange(4).repeat_interleave(30)
    tr, va = stratified_split(y, 0.1, seed=0)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 120
    assert torch.bincount(y[va]).tolist() == [3, 3, 3, 3]
    assert torch.equal(va, stratified_split(y, 0.1, seed=0)[1])
    assert not torch.equal(va, stratified_split(y, 0.1, seed=1)[1])


def test_linear_probe_errors():
    x, y = _toy(0)
    with pytest.raises(DataError, match="one class"):
        linear_probe(x, torch.zeros_like(y), x, y)
    with pytest.raises(DataError, match="missing"):
        linear_probe(x, y, x, torch.full_like(y, -1))


def _digits_pixels():
    """scikit-learn's digits as raw pixels: first 1200 images train, the other 597 test; pixels
    constant on the training images are dropped (standardising them would divide by ~0)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    keep = x[:1200].std(0) > 0
    return x[:1200, keep], y[:1200], x[1200:, keep], y[1200:]


def test_linear_probe_matches_sklearn_on_digits_at_the_selected_penalty():
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, xte, yte = _digits_pixels()
    res = linear_probe(xtr, ytr, xte, yte)
    assert res["converged"] and all(v["converged"] for v in res["convergence"].values())
    # the same standardisation (training mean / unbiased std) and e2mc's objective
    # mean CE + wd/2 ||W||^2  ==  (C * sum CE + 1/2 ||W||^2) / (C n)  with  C = 1 / (n * wd)
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    ref = LogisticRegression(C=1.0 / (len(ytr) * res["weight_decay"]), max_iter=10000, tol=1e-8)
    ref.fit(((xtr - mean) / std).numpy(), ytr.numpy())
    ref_acc = float((ref.predict(((xte - mean) / std).numpy()) == yte.numpy()).mean())
    assert res["top1"] > 0.85
    assert abs(res["top1"] - ref_acc) <= 0.005  # within 0.5 points


def test_convergence_is_reported_per_penalty_and_warned(caplog):
    xtr, ytr, xte, yte = _digits_pixels()
    wds = (1e-3, 1e-1)
    with caplog.at_level("WARNING", logger="e2mc.evaluation.linear"):
        short = linear_probe(xtr, ytr, xte, yte, weight_decays=wds, max_iter=3)
    assert not short["converged"] and short["iterations"] == 3 and not short["refit"]["converged"]
    assert [v["converged"] for v in short["convergence"].values()] == [False, False]
    warned = [r.getMessage() for r in caplog.records if "did not converge" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="e2mc.evaluation.linear"):
        full = linear_probe(xtr, ytr, xte, yte, weight_decays=wds)
    assert full["converged"] and full["iterations"] < MAX_ITER and not caplog.records
    # the reported gradient is the objective's, written out by hand: X^T (softmax - onehot) / n + wd W
    x = (xtr - xtr.mean(0)) / xtr.std(0)
    w, b, info = fit_logistic(x, ytr, 10, wds, return_info=True)
    for h, wd in enumerate(wds):
        p = torch.softmax(x @ w[h] + b[h], dim=1) - torch.nn.functional.one_hot(ytr, 10)
        g = max(float((x.T @ p / len(ytr) + wd * w[h]).abs().max()), float((p.mean(0)).abs().max()))
        assert info["grad_max"][h] == pytest.approx(g, rel=0.05, abs=2e-6) and g <= info["tol"]
        assert info["converged"][h]
