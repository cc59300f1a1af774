"""The in-step checks read nothing back to the host: deferred finiteness flag, batched Sinkhorn,
the SwAV queue's host-side fill count."""

import math

import pytest
import torch

from e2mc.criteria import E2MC, SwAVLoss, SwAVQueue, VICRegLoss, sinkhorn_knopp
from e2mc.criteria.entropy import deferred_finite_checks
from e2mc.errors import CriterionInputError

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def reads(monkeypatch):
    """Counts host reads of tensor values (see tests/train/test_distributed_steps.py)."""
    seen = []
    for name in READS:
        fn = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda *a, _fn=fn, _n=name, **k: (seen.append(_n), _fn(*a, **k))[1])
    return seen


def test_deferred_checks_flag_without_host_reads(reads):
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(32, 6, generator=g) for _ in range(2)]
    bad = [z[0].clone(), z[1]]
    bad[0][3, 2] = math.inf  # sigmoid(inf) = 1: E2MC's loss alone would stay finite
    for views, expect in ((z, 0.0), (bad, math.nan)):
        with deferred_finite_checks() as flag:
            E2MC()(views)
            VICRegLoss()(views)  # the same views again: checked once
            f = flag()
        assert reads == []
        assert f.shape == () and (math.isnan(float(f)) if math.isnan(expect) else float(f) == expect)
        reads.clear()
    with deferred_finite_checks() as flag:
        assert flag() is None  # nothing checked
    with pytest.raises(CriterionInputError, match="NaN or Inf"):  # outside the block: checked on the spot
        E2MC()(bad)


def test_batched_sinkhorn_equals_each_problem(reads):
    g = torch.Generator().manual_seed(1)
    s = torch.rand(3, 20, 7, generator=g) * 2 - 1
    both = sinkhorn_knopp(s, 0.05, 3)
    assert reads == []
    for i in range(3):
        torch.testing.assert_close(both[i], sinkhorn_knopp(s[i], 0.05, 3), rtol=1e-6, atol=1e-7)


def test_swav_step_with_queue_reads_nothing(reads):
    g = torch.Generator().manual_seed(2)
    queue = SwAVQueue(16, 5, 2)
    protos = torch.nn.functional.normalize(torch.randn(7, 5, generator=g), dim=1)
    for _ in range(3):  # empty, then full
        emb = [torch.nn.functional.normalize(torch.randn(16, 5, generator=g), dim=1) for _ in range(2)]
        with deferred_finite_checks():  # as in the trainer
            SwAVLoss()([e @ protos.t() for e in emb], embeddings=emb, prototypes=protos, queue=queue)
    assert reads == [] and queue.full and int(queue.filled) == 16
    again = SwAVQueue(16, 5, 2)
    again.load_state_dict(queue.state_dict())
    assert again.full  # the host-side count follows a loaded state
