import math

import pytest
import torch

from e2mc.errors import DataError
from e2mc.evaluate.fewshot import balanced_subset, fewshot
from e2mc.evaluate.stats import paired_difference, summarize, welch_difference


def test_balanced_subset_balanced_and_reproducible():
    y = torch.tensor([0] * 30 + [1] * 50 + [2] * 20)
    idx = balanced_subset(y, per_class=5, seed=0)
    assert torch.bincount(y[idx]).tolist() == [5, 5, 5]
    assert torch.equal(idx, balanced_subset(y, per_class=5, seed=0))
    assert not torch.equal(idx, balanced_subset(y, per_class=5, seed=1))
    frac = balanced_subset(y, fraction=0.3, seed=0)  # 0.3 * 100 / 3 = 10 per class
    assert torch.bincount(y[frac]).tolist() == [10, 10, 10]


def test_balanced_subset_errors():
    y = torch.tensor([0] * 3 + [1] * 10)
    with pytest.raises(DataError, match="fewer"):
        balanced_subset(y, per_class=5)
    with pytest.raises(DataError, match="missing"):
        balanced_subset(torch.tensor([0, 1, -1]), per_class=1)
    with pytest.raises(DataError, match="exactly one"):
        balanced_subset(y)


def test_fewshot_structure_and_seeds():
    torch.manual_seed(0)
    c = 4 * torch.randn(3, 4)
    ytr, yte = torch.arange(3).repeat(20), torch.arange(3).repeat(10)
    xtr, xte = c[ytr] + torch.randn(60, 4), c[yte] + torch.randn(30, 4)
    res = fewshot(xtr, ytr, xte, yte, shots=(1, 5), seeds=(0, 1, 2), return_indices=True)
    assert len(res["per_seed"]["top1_5shot"]) == 3
    assert res["top1_5shot"] == pytest.approx(sum(res["per_seed"]["top1_5shot"]) / 3)
    assert res["top1_5shot"] > 0.8
    lo, hi = res["top1_5shot_ci95"]
    assert lo <= res["top1_5shot"] <= hi
    assert res["indices"]["5shot"]["1"] == balanced_subset(ytr, per_class=5, seed=1).tolist()


def test_summarize_vs_scipy_by_hand():
    stats = pytest.importorskip("scipy.stats")
    xs = [0.81, 0.84, 0.80, 0.86]
    s = summarize(xs)
    m = sum(xs) / 4
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / 3)
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert (s.mean, s.std, s.n) == pytest.approx((m, sd, 4))
    assert (s.low, s.high) == pytest.approx((m - half, m + half))
    one = summarize([0.5])
    assert one.std is None and one.low is None


def test_paired_and_welch_differences():
    stats = pytest.importorskip("scipy.stats")
    a, b = [0.80, 0.82, 0.79], [0.83, 0.84, 0.83]
    d = paired_difference(a, b)
    diffs = [y - x for x, y in zip(a, b)]
    ref = stats.ttest_rel(b, a).confidence_interval(0.95)
    assert d.mean == pytest.approx(sum(diffs) / 3)
    assert (d.low, d.high) == pytest.approx((ref.low, ref.high))
    w = welch_difference(a, [0.9, 0.95, 0.85, 0.88])
    ref = stats.ttest_ind([0.9, 0.95, 0.85, 0.88], a, equal_var=False).confidence_interval(0.95)
    assert (w.low, w.high) == pytest.approx((ref.low, ref.high))
    with pytest.raises(DataError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0])
