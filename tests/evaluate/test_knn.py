import math

import pytest
import torch
from sklearn import neighbors

from e2mc.errors import DataError
from e2mc.evaluate.knn import knn_classify


def _naive_knn(train_x, train_y, test_x, test_y, k, t):
    correct = 0
    for q, y in zip(test_x.tolist(), test_y.tolist()):
        qn = math.sqrt(sum(v * v for v in q))
        sims = []
        for x, lab in zip(train_x.tolist(), train_y.tolist()):
            xn = math.sqrt(sum(v * v for v in x))
            sims.append((sum(a * b for a, b in zip(q, x)) / (qn * xn), lab))
        sims.sort(key=lambda p: -p[0])
        votes = {}
        for s, lab in sims[:k]:
            votes[lab] = votes.get(lab, 0.0) + math.exp(s / t)
        correct += max(votes, key=votes.get) == y
    return correct / len(test_y)


@pytest.fixture
def problem():
    torch.manual_seed(0)
    centers = torch.randn(4, 6)
    ytr = torch.randint(0, 4, (120,))
    yte = torch.randint(0, 4, (40,))
    return centers[ytr] + 1.2 * torch.randn(120, 6), ytr, centers[yte] + 1.2 * torch.randn(40, 6), yte


def test_knn_matches_naive_loop(problem):
    xtr, ytr, xte, yte = problem
    got = knn_classify(xtr, ytr, xte, yte, ks=(1, 5, 20), temperature=0.07, chunk_size=7)
    for k in (1, 5, 20):
        assert got[k] == pytest.approx(_naive_knn(xtr, ytr, xte, yte, k, 0.07))


def test_knn_matches_sklearn_weighted(problem):
    xtr, ytr, xte, yte = problem
    t = 0.5
    clf = neighbors.KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute",
                                         weights=lambda d: __import__("numpy").exp((1 - d) / t))
    clf.fit(xtr.numpy(), ytr.numpy())
    ref = float((clf.predict(xte.numpy()) == yte.numpy()).mean())
    assert knn_classify(xtr, ytr, xte, yte, ks=(10,), temperature=t)[10] == pytest.approx(ref)


def test_knn_clips_k_to_the_training_size_with_a_warning(problem):
    xtr, ytr, xte, yte = problem
    with pytest.warns(UserWarning, match=r"k=50, 200 > the 30 training samples; using k=30.*--ks"):
        got = knn_classify(xtr[:30], ytr[:30], xte, yte, ks=(200, 1, 50))
    assert sorted(got) == [1, 30]  # keyed by the k actually used, never by the k asked
    assert got[30] == pytest.approx(_naive_knn(xtr[:30], ytr[:30], xte, yte, 30, 0.07))
    assert got[1] == pytest.approx(_naive_knn(xtr[:30], ytr[:30], xte, yte, 1, 0.07))


def test_knn_and_label_free_metrics_follow_the_features_device(problem):
    """Tensors made without ``device=`` land on the default device: with the default set to "meta"
    and the features on the CPU, any such tensor (e.g. a vote buffer) breaks the computation,
    exactly as a CPU-built buffer breaks CUDA features."""
    from e2mc.evaluate import metrics
    from e2mc.evaluate.fewshot import balanced_subset

    xtr, ytr, xte, yte = problem
    ref_knn = knn_classify(xtr, ytr, xte, yte.tolist(), ks=(1, 5))
    ref_sub = balanced_subset(ytr, per_class=3, seed=1)
    ref_m = (metrics.rankme(xtr), metrics.uniformity(xtr), metrics.alignment(xtr, xtr + 0.1),
             metrics.marginal_entropy(xtr), metrics.e2mc_covariance(xtr))
    torch.set_default_device("meta")
    try:
        got_knn = knn_classify(xtr, ytr, xte, yte.tolist(), ks=(1, 5))
        got_sub = balanced_subset(ytr, per_class=3, seed=1)
        got_m = (metrics.rankme(xtr), metrics.uniformity(xtr), metrics.alignment(xtr, xtr + 0.1),
                 metrics.marginal_entropy(xtr), metrics.e2mc_covariance(xtr))
    finally:
        torch.set_default_device(None)
    assert got_knn == ref_knn and got_sub.device == ytr.device and torch.equal(got_sub, ref_sub)
    assert got_m == pytest.approx(ref_m)


def test_knn_errors(problem):
    xtr, ytr, xte, yte = problem
    with pytest.raises(DataError, match="missing"):
        knn_classify(xtr, torch.full_like(ytr, -1), xte, yte, ks=(1,))
    with pytest.raises(DataError, match="one class"):
        knn_classify(xtr, torch.zeros_like(ytr), xte, yte, ks=(1,))
    bad = xte.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        knn_classify(xtr, ytr, bad, yte, ks=(1,))


def test_linear_probe_and_fewshot_follow_the_features_device(problem):
    """Same trap for the probes: nothing may be built on the default device instead of the features'."""
    from e2mc.evaluate import metrics
    from e2mc.evaluate.fewshot import fewshot
    from e2mc.evaluate.linear import linear_probe

    xtr, ytr, xte, yte = problem
    ref = (linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-3, 1e-1)),
           fewshot(xtr, ytr, xte, yte, shots=(2,), seeds=(0,)), metrics.alpha_req(xtr), metrics.lidar(xtr[:40], 4))
    torch.set_default_device("meta")
    try:
        got = (linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-3, 1e-1)),
               fewshot(xtr, ytr, xte, yte, shots=(2,), seeds=(0,)), metrics.alpha_req(xtr), metrics.lidar(xtr[:40], 4))
    finally:
        torch.set_default_device(None)
    assert got[0]["top1"] == ref[0]["top1"] and got[1]["top1_2shot"] == ref[1]["top1_2shot"]
    assert got[2] == pytest.approx(ref[2]) and got[3] == pytest.approx(ref[3])
