"""HuBERT's masked prediction loss against a hand computation, and the k-means assignment."""

import math

import pytest
import torch

from e2mc.criteria.hubert import HuBERTLoss, assign_clusters
from e2mc.errors import CriterionInputError

# one utterance of 3 frames, final_dim 2, 3 label embeddings
PROJ = [[1.0, 0.0], [0.6, 0.8], [-1.0, 1.0]]
EMBS = [[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]
TARGETS = [0, 2, 1]
MASK = [True, False, True]


def _reference(temp, w_m, w_u, pen, pen_w):
    """fairseq's hubert_criterion by hand: cosine / temp logits, summed cross-entropies, / sample_size."""

    def cos(a, b):
        return (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))

    ce = []
    for x, t in zip(PROJ, TARGETS):
        logits = [cos(x, e) / temp for e in EMBS]
        ce.append(math.log(sum(math.exp(v) for v in logits)) - logits[t])
    sum_m = sum(c for c, m in zip(ce, MASK) if m)
    sum_u = sum(c for c, m in zip(ce, MASK) if not m)
    size = (sum(MASK) if w_m > 0 else 0) + ((len(MASK) - sum(MASK)) if w_u > 0 else 0)
    return (w_m * sum_m + w_u * sum_u + pen_w * pen * size) / size, sum_m / 2, sum_u / 1


@pytest.mark.parametrize("temp,w_m,w_u,pen_w", [(0.1, 1.0, 0.0, 10.0), (0.5, 1.0, 0.5, 0.0), (0.1, 0.0, 1.0, 1.0)])
def test_loss_matches_a_hand_computation(temp, w_m, w_u, pen_w):
    pen = 0.25
    crit = HuBERTLoss(logit_temp=temp, pred_masked_weight=w_m, pred_nomask_weight=w_u, feature_pen_weight=pen_w)
    out = crit(
        torch.tensor([PROJ]),
        torch.tensor(EMBS),
        torch.tensor([TARGETS]),
        torch.tensor([MASK]),
        torch.tensor(pen),
    )
    loss, masked, unmasked = _reference(temp, w_m, w_u, pen, pen_w)
    assert out["loss"].item() == pytest.approx(loss, rel=1e-5)
    assert out["masked"].item() == pytest.approx(masked, rel=1e-5)
    assert out["unmasked"].item() == pytest.approx(unmasked, rel=1e-5)
    assert out["masked_frames"].item() == pytest.approx(2 / 3)


def test_loss_and_gradient_match_fairseqs_compute_nce_and_hubert_criterion():
    """tests/official/check/hubert_official.py (fairseq 3d262bb2: its ``compute_nce`` exec'd from
    the checkout, the criterion's sums / sample_size) printed these for the same inputs."""
    torch.manual_seed(0)
    proj = torch.randn(2, 6, 4, requires_grad=True)
    label_embs = torch.randn(5, 4)
    targets = torch.randint(0, 5, (2, 6))
    mask = torch.rand(2, 6) < 0.6
    crit = HuBERTLoss(logit_temp=0.1, pred_masked_weight=1.0, pred_nomask_weight=0.5, feature_pen_weight=10.0)
    loss = crit(proj, label_embs, targets, mask, torch.tensor(0.3))["loss"]
    loss.backward()
    assert loss.item() == pytest.approx(7.751384735107422, rel=1e-6)
    assert proj.grad.abs().sum().item() == pytest.approx(7.108354568481445, rel=1e-5)


def test_the_loss_has_gradients_for_the_projection_and_the_label_embeddings():
    proj, embs = torch.tensor([PROJ], requires_grad=True), torch.tensor(EMBS, requires_grad=True)
    HuBERTLoss()(proj, embs, torch.tensor([TARGETS]), torch.tensor([MASK]))["loss"].backward()
    assert proj.grad[0, 1].abs().sum() == 0  # the unmasked frame has weight 0
    assert proj.grad[0, 0].abs().sum() > 0 and embs.grad.abs().sum() > 0


def test_assign_clusters_is_the_nearest_centroid():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 50, 4, generator=g), torch.randn(7, 4, generator=g)
    want = torch.cdist(x.reshape(-1, 4).double(), c.double()).argmin(1).reshape(2, 50)
    assert torch.equal(assign_clusters(x, c), want)


def test_bad_shapes_are_one_line_errors():
    with pytest.raises(CriterionInputError, match="projections"):
        HuBERTLoss()(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(3).bool())
    with pytest.raises(CriterionInputError, match="width 4 cannot be assigned to centroids of width 3"):
        assign_clusters(torch.zeros(2, 4), torch.zeros(5, 3))
