"""The streaming linear probe (issue 17) against the exact L-BFGS solver and scikit-learn."""

import numpy as np
import pytest
import torch

from e2mc.errors import DataError
from e2mc.evaluation.linear import choose_solver, lbfgs_bytes, linear_probe
from e2mc.evaluation.streaming import feature_stats

WDS = (1e-3, 1e-2, 1e-1)  # at 1e-4 the 1000-step budget stops 1.4 points short of the optimum here


@pytest.fixture(scope="module")
def digits():
    """Synthetic class-structured features (10 Gaussian classes in 32-d with correlated noise;
    about 85% accuracy), 3000 training and 3000 test points: a test set large enough that
    0.5 points are 15 predictions."""
    g = torch.Generator().manual_seed(0)
    centers = 0.45 * torch.randn(10, 32, generator=g)
    mix = torch.eye(32) + 0.3 * torch.randn(32, 32, generator=g)

    def draw(n):
        y = torch.randint(0, 10, (n,), generator=g)
        return centers[y] + torch.randn(n, 32, generator=g) @ mix + 4.0, y

    return (*draw(3000), *draw(3000))


@pytest.fixture(scope="module")
def both(digits):
    xtr, ytr, xte, yte = digits
    return (
        linear_probe(xtr, ytr, xte, yte, weight_decays=WDS, solver="lbfgs"),
        linear_probe(xtr, ytr, xte, yte, weight_decays=WDS, solver="streaming"),
    )


def test_streaming_agrees_with_lbfgs_and_sklearn_within_half_a_point(digits, both):
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, xte, yte = digits
    exact, stream = both
    assert exact["solver"] == "lbfgs" and stream["solver"] == "streaming" and stream["converged"] is None
    assert 0.6 < stream["top1"] < 0.97
    assert abs(stream["top1"] - exact["top1"]) <= 0.005
    # at the penalty the streaming probe selected, scikit-learn's exact optimum scores the same
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    ref = LogisticRegression(C=1.0 / (len(ytr) * stream["weight_decay"]), max_iter=5000, tol=1e-6)
    ref.fit(((xtr - mean) / std).numpy(), ytr.numpy())
    assert abs(stream["top1"] - float((ref.predict(((xte - mean) / std).numpy()) == yte.numpy()).mean())) <= 0.005
    for wd in WDS:  # held-out accuracy per penalty: the same selection problem
        assert abs(stream["val_top1_per_weight_decay"][wd] - exact["val_top1_per_weight_decay"][wd]) <= 0.02


def test_streaming_selection_never_sees_test_labels_and_reads_fp16_memmaps(tmp_path, digits, both):
    xtr, ytr, xte, yte = digits
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=tuple(xtr.shape))
    mm[:] = xtr.numpy()
    mm.flush()
    bank = torch.from_numpy(np.load(tmp_path / "f.npy", mmap_mode="r+"))
    shuffled = yte[torch.randperm(len(yte), generator=torch.Generator().manual_seed(0))]
    res = linear_probe(bank, ytr, xte, shuffled, weight_decays=WDS, solver="streaming")
    stream = both[1]
    assert res["weight_decay"] == stream["weight_decay"]
    assert res["val_top1_per_weight_decay"] == pytest.approx(stream["val_top1_per_weight_decay"], abs=0.01)
    assert res["top1"] < 0.3  # the test labels are noise now; only the score used them


def test_auto_chooses_by_the_lbfgs_memory_estimate(digits, both):
    xtr, ytr, xte, yte = digits
    assert lbfgs_bytes(1000, 10, 5, 2) == 4 * (4 * 1000 * 2 * 5 + 3 * 1000 * 10)
    assert choose_solver("auto", 1797, 64, 10, 6) == "lbfgs"
    assert choose_solver("auto", 1_281_167, 2048, 1000, 6) == "streaming"
    assert choose_solver("lbfgs", 1_281_167, 2048, 1000, 6) == "lbfgs"
    with pytest.raises(DataError, match="unknown solver 'sgd'"):
        linear_probe(xtr, ytr, xte, yte, solver="sgd")


def test_feature_stats_match_torch_in_blocks():
    x = torch.randn(1000, 7) * 3 + 5
    idx = torch.arange(0, 1000, 3)
    mean, std = feature_stats(x.half(), idx, chunk=64)
    ref = x.half().float()[idx]
    assert torch.allclose(mean, ref.mean(0), atol=1e-4) and torch.allclose(std, ref.std(0), atol=1e-4)
