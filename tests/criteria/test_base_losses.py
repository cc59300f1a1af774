import numpy as np
import pytest
import torch

from e2mc.criteria import BASE_CRITERIA, SimSiamLoss, SwAVLoss, VICRegLoss, sinkhorn_knopp
from e2mc.criteria.__init__ import build_criterion
from e2mc.criteria.swav import SwAVQueue
from e2mc.errors import ConfigError, CriterionInputError


def _np_vicreg(z1, z2, sw=25.0, vw=25.0, cw=1.0, eps=1e-4):
    n, d = z1.shape
    inv = np.mean((z1 - z2) ** 2)
    var, cov = 0.0, 0.0
    for z in (z1, z2):
        var += np.mean(np.maximum(0.0, 1.0 - np.sqrt(z.var(axis=0, ddof=1) + eps))) / 2
        c = np.cov(z, rowvar=False)
        cov += sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return sw * inv + vw * var + cw * cov, inv, var, cov


def test_vicreg_matches_numpy():
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(12, 5)) * 0.7
    z2 = z1 + 0.3 * rng.normal(size=(12, 5))
    out = VICRegLoss()([torch.tensor(z1), torch.tensor(z2)])
    ref = _np_vicreg(z1, z2)
    for key, r in zip(("loss", "invariance", "variance", "covariance"), ref):
        assert float(out[key]) == pytest.approx(r, rel=1e-5), key
    # wide views use the Gram-matrix path for the covariance
    z1, z2 = rng.normal(size=(6, 20)), rng.normal(size=(6, 20))
    out = VICRegLoss(sim_weight=1.0, var_weight=2.0, cov_weight=3.0)([torch.tensor(z1), torch.tensor(z2)])
    assert float(out["loss"]) == pytest.approx(_np_vicreg(z1, z2, 1.0, 2.0, 3.0)[0], rel=1e-4)


def test_vicreg_needs_two_views():
    with pytest.raises(CriterionInputError, match="exactly 2 views"):
        VICRegLoss()([torch.randn(4, 3)] * 3)


def test_simsiam_matches_numpy_and_stops_gradient():
    rng = np.random.default_rng(1)
    z = [torch.tensor(rng.normal(size=(7, 4)), requires_grad=True) for _ in range(2)]
    p = [torch.tensor(rng.normal(size=(7, 4)), requires_grad=True) for _ in range(2)]
    out = SimSiamLoss()(z, p)

    def cos(a, b):
        return np.mean([a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i]) for i in range(len(a))])

    zn = [t.detach().numpy() for t in z]
    pn = [t.detach().numpy() for t in p]
    assert float(out["loss"].detach()) == pytest.approx(-(cos(pn[0], zn[1]) + cos(pn[1], zn[0])) / 2, rel=1e-5)
    out["loss"].backward()
    assert z[0].grad is None and z[1].grad is None
    assert p[0].grad is not None and p[0].grad.abs().sum() > 0
    with pytest.raises(CriterionInputError, match="same shape"):
        SimSiamLoss()(z, [torch.randn(7, 5)] * 2)


def _np_sinkhorn(scores, eps, iters):
    q = np.exp(scores / eps).T  # K x B
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        for r in range(k):
            q[r] /= q[r].sum() * k
        for c in range(b):
            q[:, c] /= q[:, c].sum() * b
    return (q * b).T


def test_sinkhorn_marginals_and_numpy():
    rng = np.random.default_rng(2)
    s = rng.uniform(-1, 1, size=(24, 6))
    q = sinkhorn_knopp(torch.tensor(s, dtype=torch.float32), 0.05, 3)
    assert q.shape == (24, 6) and q.dtype == torch.float32
    np.testing.assert_allclose(q.sum(1).numpy(), np.ones(24), rtol=1e-5)  # rows sum to 1
    qq = sinkhorn_knopp(torch.tensor(s, dtype=torch.float32), 0.5, 50)  # converged
    np.testing.assert_allclose(qq.sum(0).numpy(), np.full(6, 24 / 6), rtol=1e-3)  # cols B/K
    np.testing.assert_allclose(q.numpy(), _np_sinkhorn(s.copy(), 0.05, 3), rtol=1e-4, atol=1e-6)


def _np_log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_swav_loss_matches_numpy():
    rng = np.random.default_rng(3)
    scores = [rng.uniform(-1, 1, size=(10, 5)) for _ in range(4)]  # 2 large + 2 small crops
    out = SwAVLoss(temperature=0.1)([torch.tensor(s, requires_grad=True) for s in scores])
    total = 0.0
    for crop in (0, 1):
        q = _np_sinkhorn(scores[crop].copy(), 0.05, 3)
        sub = [-np.mean(np.sum(q * _np_log_softmax(scores[v] / 0.1), axis=1)) for v in range(4) if v != crop]
        total += np.mean(sub)
    assert float(out["loss"].detach()) == pytest.approx(total / 2, rel=1e-5)
    out["loss"].backward()


def test_swav_queue_is_used_when_full():
    torch.manual_seed(0)
    k, d, b = 5, 4, 6
    protos = torch.nn.functional.normalize(torch.randn(k, d), dim=1)
    emb = [torch.nn.functional.normalize(torch.randn(b, d), dim=1) for _ in range(2)]
    scores = [e @ protos.t() for e in emb]
    queue = SwAVQueue(length=2 * b, dim=d, num_crops_for_assign=2)
    crit = SwAVLoss()
    plain = float(crit(scores)["loss"])
    # not full yet: same loss as without a queue, the queue fills
    for _ in range(2):
        assert not queue.full
        assert float(crit(scores, emb, protos, queue)["loss"]) == pytest.approx(plain, rel=1e-6)
    assert queue.full
    torch.testing.assert_close(queue.embeddings[0, :b], emb[0])
    # full: queue scores prepended before Sinkhorn, only the batch rows used
    old = queue.embeddings.clone()
    with_queue = float(crit(scores, emb, protos, queue)["loss"])
    total = 0.0
    for i, crop in enumerate((0, 1)):
        full = torch.cat([old[i] @ protos.t(), scores[crop]]).numpy().astype(np.float64)
        q = _np_sinkhorn(full, 0.05, 3)[-b:]
        other = 1 - crop
        total += -np.mean(np.sum(q * _np_log_softmax(scores[other].numpy() / 0.1), axis=1))
    assert with_queue == pytest.approx(total / 2, rel=1e-5)
    with pytest.raises(CriterionInputError, match="queue needs"):
        crit(scores, queue=queue)


def test_swav_bad_config_and_input():
    with pytest.raises(ConfigError):
        SwAVLoss(temperature=0)
    with pytest.raises(CriterionInputError, match="crops_for_assign"):
        SwAVLoss(crops_for_assign=(0, 2))([torch.randn(4, 3)] * 2)


def test_base_registry():
    assert set(BASE_CRITERIA) == {"vicreg", "swav", "simsiam", "dino"}
    assert isinstance(build_criterion("vicreg", sim_weight=1.0), VICRegLoss)
    with pytest.raises(ConfigError, match="use one of"):
        build_criterion("byol")
