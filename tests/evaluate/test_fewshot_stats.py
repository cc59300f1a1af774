import math

import pytest
import torch
from scipy import stats

from e2mc.data.splits import balanced_subset
from e2mc.errors import DataError
from e2mc.evaluation.fewshot import fewshot
from e2mc.evaluation.stats import difference, paired_difference, summarize, welch_difference


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
    c = 2 * torch.randn(3, 4)
    ytr, yte = torch.arange(3).repeat(20), torch.arange(3).repeat(30)
    xtr, xte = c[ytr] + torch.randn(60, 4), c[yte] + torch.randn(90, 4)
    res = fewshot(xtr, ytr, xte, yte, shots=(1, 5), seeds=(0, 1, 2), return_indices=True)
    accs = res["per_seed"]["top1_5shot"]
    assert len(accs) == 3 and len(set(accs)) > 1  # the seeds draw different subsets: a real spread
    assert res["top1_5shot"] == pytest.approx(sum(accs) / 3)
    assert res["top1_5shot"] > 0.6
    # the stored interval is the t-interval of the per-seed accuracies, recomputed here by hand
    m = sum(accs) / 3
    sem = math.sqrt(sum((a - m) ** 2 for a in accs) / 2) / math.sqrt(3)
    assert res["top1_5shot_ci95"] == pytest.approx([m - stats.t.ppf(0.975, 2) * sem, m + stats.t.ppf(0.975, 2) * sem])
    assert res["indices"]["5shot"]["1"] == balanced_subset(ytr, per_class=5, seed=1).tolist()


def test_shots_above_the_smallest_class_are_left_out_with_a_warning():
    """A small folder used to lose the whole evaluation to balanced_subset's error (a new user's
    trial); like kNN's k above the training set, such shots are left out, and said."""
    torch.manual_seed(0)
    ytr, yte = torch.tensor([0] * 4 + [1] * 9), torch.tensor([0, 1] * 5)
    xtr, xte = torch.randn(13, 4) + ytr[:, None], torch.randn(10, 4) + yte[:, None]
    with pytest.warns(UserWarning, match=r"few-shot: k=5, 10 > the 4 samples of the smallest training class"):
        res = fewshot(xtr, ytr, xte, yte, shots=(1, 5, 10), seeds=(0, 1))
    assert "top1_1shot" in res and "top1_5shot" not in res
    with pytest.raises(DataError, match=r"eval.fewshot.shots=\[1,4\]"):
        fewshot(xtr, ytr, xte, yte, shots=(5,), seeds=(0,))


def test_summarize_vs_scipy_by_hand():
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


def test_difference_pairs_by_seed_only_when_the_seed_sets_match():
    # hand-listed per-seed values; the arm's seeds come in another order: pairing is by seed
    ref = {0: 0.801, 1: 0.822, 2: 0.795, 3: 0.810}
    arm = {3: 0.829, 1: 0.835, 0: 0.826, 2: 0.811}
    d = difference(ref, arm)
    seeds = [0, 1, 2, 3]
    ci = stats.ttest_rel([arm[s] for s in seeds], [ref[s] for s in seeds]).confidence_interval(0.95)
    assert d.kind == "paired, n=4"
    assert (d.low, d.high) == (float(ci.low), float(ci.high))  # exactly scipy's numbers
    assert d.mean == pytest.approx((0.826 + 0.835 + 0.811 + 0.829 - 0.801 - 0.822 - 0.795 - 0.810) / 4)
    # one seed differs: the samples are unpaired -> Welch on all values
    arm2 = {0: 0.826, 1: 0.835, 2: 0.811, 7: 0.829}
    w = difference(ref, arm2)
    ci = stats.ttest_ind(list(arm2.values()), list(ref.values()), equal_var=False).confidence_interval(0.95)
    assert w.kind == "Welch, n=4 vs 4" and (w.low, w.high) == (float(ci.low), float(ci.high))
    # unknown seeds: Welch too; one value on a side: no interval
    assert difference([0.8, 0.82], [0.83, 0.84], [None, None], [None, None]).kind.startswith("Welch")
    one = difference([0.8], [0.83, 0.84], [0], [0, 1])
    assert one.low is None and one.kind == "n=1: no interval" and one.mean == pytest.approx(0.035)
    # no spread: the degenerate interval (scipy would return NaN)
    flat = difference({0: 0.5, 1: 0.6}, {0: 0.7, 1: 0.8})  # +0.2 with every seed: no spread, no interval
    assert (
        flat.mean == pytest.approx(0.2)
        and (flat.low, flat.high) == (None, None)
        and "the same difference with every seed" in flat.kind
    )
    same = difference({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})  # identical arms: a zero difference, [0, 0]
    assert (same.low, same.high) == (0.0, 0.0)
