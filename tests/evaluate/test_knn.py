import math

import pytest
import torch
from sklearn import neighbors

from e2mc.errors import DataError
from e2mc.evaluation.knn import knn_classify


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
    clf = neighbors.KNeighborsClassifier(
        n_neighbors=10, metric="cosine", algorithm="brute", weights=lambda d: __import__("numpy").exp((1 - d) / t)
    )
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
    from e2mc import metrics
    from e2mc.data.splits import balanced_subset

    xtr, ytr, xte, yte = problem
    ref_knn = knn_classify(xtr, ytr, xte, yte.tolist(), ks=(1, 5))
    ref_sub = balanced_subset(ytr, per_class=3, seed=1)
    ref_m = (
        metrics.rankme(xtr),
        metrics.uniformity(xtr),
        metrics.alignment(xtr, xtr + 0.1),
        metrics.marginal_entropy(xtr),
        metrics.e2mc_covariance(xtr),
    )
    torch.set_default_device("meta")
    try:
        got_knn = knn_classify(xtr, ytr, xte, yte.tolist(), ks=(1, 5))
        got_sub = balanced_subset(ytr, per_class=3, seed=1)
        got_m = (
            metrics.rankme(xtr),
            metrics.uniformity(xtr),
            metrics.alignment(xtr, xtr + 0.1),
            metrics.marginal_entropy(xtr),
            metrics.e2mc_covariance(xtr),
        )
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
    from e2mc import metrics
    from e2mc.evaluation.fewshot import fewshot
    from e2mc.evaluation.linear import linear_probe

    xtr, ytr, xte, yte = problem
    ref = (
        linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-3, 1e-1)),
        fewshot(xtr, ytr, xte, yte, shots=(2,), seeds=(0,)),
        metrics.alpha_req(xtr),
        metrics.lidar(xtr[:40], 4),
    )
    torch.set_default_device("meta")
    try:
        got = (
            linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-3, 1e-1)),
            fewshot(xtr, ytr, xte, yte, shots=(2,), seeds=(0,)),
            metrics.alpha_req(xtr),
            metrics.lidar(xtr[:40], 4),
        )
    finally:
        torch.set_default_device(None)
    assert got[0]["top1"] == ref[0]["top1"] and got[1]["top1_2shot"] == ref[1]["top1_2shot"]
    assert got[2] == pytest.approx(ref[2]) and got[3] == pytest.approx(ref[3])


def _full_matrix_topk(train_x, test_x, k):
    """Reference: the whole (n_test, n_train) similarity matrix, ordered by (similarity desc,
    training index asc) with one stable sort (the pre-streaming implementation held this matrix)."""
    sim = torch.nn.functional.normalize(test_x.float(), dim=1) @ torch.nn.functional.normalize(train_x.float(), dim=1).T
    order = sim.argsort(dim=1, descending=True, stable=True)[:, :k]
    return sim.gather(1, order), order


def _full_matrix_knn(train_x, train_y, test_x, test_y, ks, t):
    """The pre-streaming knn_classify: top-max(ks) of the full similarity matrix, weighted votes."""
    sim, idx = _full_matrix_topk(train_x, test_x, max(ks))
    lab, w = train_y[idx], (sim / t).exp()
    out = {}
    for k in ks:
        votes = torch.zeros(test_x.shape[0], int(train_y.max()) + 1).scatter_add_(1, lab[:, :k], w[:, :k])
        out[k] = int((votes.argmax(1) == test_y).sum()) / test_y.shape[0]
    return out


@pytest.mark.parametrize("chunk_size,bank_chunk", [(7, 13), (1, 5), (64, 1000)])
def test_streamed_topk_equals_the_full_matrix_with_ties_by_lower_index(chunk_size, bank_chunk):
    from e2mc.evaluation.knn import knn_topk

    g = torch.Generator().manual_seed(3)

    # unit vectors with four entries +-0.5 among 8: every cosine is an exact multiple of 0.25,
    # so whatever the matmul blocking, many similarities tie exactly (duplicated rows too)
    def units(n):
        signs = torch.randint(0, 2, (n, 8), generator=g).float() - 0.5
        mask = torch.stack([torch.randperm(8, generator=g) < 4 for _ in range(n)])
        return signs * mask

    base = units(40)
    xtr = torch.cat([base, base, base[:20]])
    xte = torch.cat([units(25), base[:10]])
    ref_v, ref_i = _full_matrix_topk(xtr, xte, 17)
    got_v, got_i = knn_topk(xtr, xte, 17, chunk_size=chunk_size, bank_chunk=bank_chunk)
    assert torch.equal(got_i, ref_i)
    assert torch.allclose(got_v, ref_v, atol=1e-6)


@pytest.mark.parametrize("chunk_size,bank_chunk", [(7, 13), (50, 31)])
def test_streamed_knn_equals_the_full_matrix_knn_and_the_naive_loop(problem, chunk_size, bank_chunk):
    xtr, ytr, xte, yte = problem
    ks = (1, 5, 20)
    got = knn_classify(xtr, ytr, xte, yte, ks=ks, chunk_size=chunk_size, bank_chunk=bank_chunk)
    assert got == _full_matrix_knn(xtr, ytr, xte, yte, ks, 0.07)
    assert got == knn_classify(xtr, ytr, xte, yte, ks=ks)  # chunk sizes never change the result
    for k in ks:
        assert got[k] == pytest.approx(_naive_knn(xtr, ytr, xte, yte, k, 0.07))


def test_knn_on_a_float16_memory_mapped_bank(tmp_path, problem):
    import numpy as np

    xtr, ytr, xte, yte = problem
    mm = np.lib.format.open_memmap(tmp_path / "bank.npy", mode="w+", dtype=np.float16, shape=tuple(xtr.shape))
    mm[:] = xtr.numpy()
    mm.flush()
    bank = torch.from_numpy(np.load(tmp_path / "bank.npy", mmap_mode="r+"))  # mapped, no copy
    got = knn_classify(bank, ytr, xte, yte, ks=(1, 5), bank_chunk=16)
    assert got == _full_matrix_knn(xtr.half().float(), ytr, xte, yte, (1, 5), 0.07)
