"""The wav2vec2 method's loss against references on the same intermediate tensors (same mask,
negatives and Gumbel draw, fixed seeds): a by-hand computation of the contrastive loss (cosine /
temperature, positive at index 0, a negative equal to its positive at -inf, cross-entropy summed
over the masked frames) and of the diversity loss ((G V - perplexity) / (G V), the perplexity from
the quantiser's soft code distribution over the masked frames), and transformers'
``Wav2Vec2ForPreTraining.forward`` given the same mask and negatives."""

import numpy as np
import pytest
import torch

from e2mc.config import load_config
from e2mc.criteria.wav2vec2 import Wav2Vec2Loss
from e2mc.errors import ConfigError, CriterionInputError
from e2mc.methods import METHODS, StepContext
from e2mc.models.checkpoints import load_model
from tests.audio.test_wav2vec2_continue import tiny_pretraining

NO_DROPOUT = dict(
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
    feat_quantizer_dropout=0.0, layerdrop=0.0,
)  # fmt: skip


def by_hand(c, q, neg, mask, temperature):
    """Summed cross-entropy over the masked frames, written out."""
    n, t, d = q.shape
    targets = torch.cat([q[None], q.reshape(-1, d)[neg.reshape(-1)].view(n, t, -1, d).permute(2, 0, 1, 3)])
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    logits = (unit(c)[None] * unit(targets)).sum(-1) / temperature  # (K + 1, N, T)
    same = (targets[1:] == q[None]).all(-1)
    logits[1:][same] = float("-inf")
    ce = torch.logsumexp(logits, 0) - logits[0]
    return ce[mask].sum()


def perplexity_by_hand(model, x, mask):
    """exp(entropy) of the mean soft code distribution over the masked frames, summed over groups."""
    m, qz = model.backbone.model, model.quantizer
    extract = m.feature_projection.layer_norm(m.feature_extractor(x).transpose(1, 2))
    logits = qz.weight_proj(extract)[mask].view(-1, qz.num_groups, qz.num_vars)
    p = logits.softmax(-1).mean(0)
    return torch.exp(-(p * p.log()).sum(-1)).sum()


@pytest.fixture
def setup(tmp_path, one_torch_thread):
    folder = tiny_pretraining(tmp_path / "pt", **NO_DROPOUT)
    model, _ = load_model(folder, method="wav2vec2")
    cfg = load_config(None, {"method.name": "wav2vec2", "mode": "continue"})
    method = METHODS["wav2vec2"]
    state = method.build_state(cfg, model, 1, 3, lambda *a: None)
    model.train()
    x = torch.randn(3, 4000, generator=torch.Generator().manual_seed(1))
    return folder, model, cfg, method, state, x


def test_the_loss_equals_a_reference_by_hand(setup):
    folder, model, cfg, method, state, x = setup
    np.random.seed(0)
    torch.manual_seed(0)
    out = model([x])
    ctx = StepContext(model, state, 0, cfg)
    method.before_forward(ctx)
    terms = method.base_loss(out, method.build_criterion(cfg), out["z"][:2], ctx)
    c, q, neg, mask, ppl = (out[k][0].detach() for k in ("c", "q", "neg", "mask", "ppl"))
    assert mask.dtype == torch.bool and 0 < mask.float().mean() < 1 and neg.shape == (*mask.shape, 5)
    n = mask.sum()
    contrastive = by_hand(c, q, neg, mask, 0.1)  # the config's contrastive_logits_temperature
    torch.testing.assert_close(terms["contrastive"], contrastive / n)
    hand_ppl = perplexity_by_hand(model, x, mask)
    torch.testing.assert_close(ppl, hand_ppl)
    gv = 2 * 12
    torch.testing.assert_close(terms["diversity"], (gv - hand_ppl) / gv)
    torch.testing.assert_close(terms["loss"], contrastive / n + 0.1 * (gv - hand_ppl) / gv)  # diversity_loss_weight
    assert float(terms["masked"]) == pytest.approx(float(mask.float().mean()))
    assert float(terms["gumbel_temp"]) == 0.5  # a continuation starts where BASE's schedule ended


def test_the_loss_equals_transformers_pretraining_forward(setup):
    import transformers as tf
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    folder, model, cfg, method, state, x = setup
    np.random.seed(0)
    torch.manual_seed(0)
    out = model([x])
    ctx = StepContext(model, state, 0, cfg)
    terms = method.base_loss(out, method.build_criterion(cfg), out["z"][:2], ctx)

    ref = tf.Wav2Vec2ForPreTraining.from_pretrained(folder).train()
    ref.set_gumbel_temperature(0.5)
    np.random.seed(0)  # the same draws: the mask, then the negatives
    frames = out["mask"][0].shape[1]
    mask = _compute_mask_indices((3, frames), 0.3, 4, min_masks=2)
    neg = _sample_negative_indices((3, frames), 5, mask)
    torch.manual_seed(0)  # the same Gumbel draw
    got = ref(x, mask_time_indices=torch.from_numpy(mask), sampled_negative_indices=torch.from_numpy(neg))
    assert torch.equal(out["mask"][0], torch.from_numpy(mask)) and torch.equal(out["neg"][0], torch.from_numpy(neg))
    n = int(mask.sum())
    torch.testing.assert_close(terms["loss"], got.loss / n)
    torch.testing.assert_close(terms["contrastive"], got.contrastive_loss / n)
    torch.testing.assert_close(terms["diversity"], got.diversity_loss / n)


def test_the_add_on_sees_both_crops_pooled_and_the_loss_averages_them(setup):
    folder, model, cfg, method, state, x = setup
    np.random.seed(0)
    torch.manual_seed(0)
    views = [x, x.roll(500, 1)]
    out = model(views)  # one concatenated pass, split per crop
    assert [z.shape for z in out["z"]] == [(3, 32), (3, 32)] and len(out["c"]) == len(out["ppl"]) == 2
    crit = method.build_criterion(cfg)
    terms = method.base_loss(out, crit, out["z"][:2], StepContext(model, state, 0, cfg))
    each = [crit(*([out[k][i]] for k in ("c", "q", "neg", "mask", "ppl")))["loss"] for i in range(2)]
    torch.testing.assert_close(terms["loss"], (each[0] + each[1]) / 2)
    model.eval()  # evaluation: the plain pass, no masking, the pooled embedding only
    with torch.no_grad():
        plain = model([x])
    assert plain["c"] == [] and torch.equal(plain["z"][0], model.backbone(x))


def test_a_negative_equal_to_its_positive_is_left_out():
    q = torch.randn(1, 6, 4)
    c = torch.randn(1, 6, 4)
    mask = torch.tensor([[True, True, True, False, False, False]])
    neg = torch.tensor([[[1, 2], [0, 0], [0, 1], [0, 0], [0, 0], [0, 0]]])
    q[0, 1] = q[0, 0]  # frame 0's first negative (frame 1) is the same vector as its positive
    out = Wav2Vec2Loss(temperature=0.5, diversity_weight=0.0, num_codevectors=4)(
        [c], [q], [neg], [mask], [torch.tensor(4.0)]
    )
    torch.testing.assert_close(out["contrastive"], by_hand(c, q, neg, mask, 0.5) / 3)
    assert torch.isfinite(out["loss"]) and float(out["diversity"]) == 0.0


def test_bad_inputs_are_one_line_errors(setup):
    folder, model, cfg, method, state, x = setup
    with pytest.raises(CriterionInputError, match="must share"):
        Wav2Vec2Loss()(
            [torch.randn(1, 5, 4)],
            [torch.randn(1, 6, 4)],
            [torch.zeros(1, 5, 2)],
            [torch.ones(1, 5, dtype=torch.bool)],
            [torch.tensor(1.0)],
        )
    with pytest.raises(ConfigError, match="raise data.audio.crop_seconds"):
        model([torch.randn(2, 40)])  # 3 encoder frames, fewer than mask_time_length 4
    with pytest.raises(ConfigError, match="cov_weight=auto is not measured"):
        method.base_loss(model([x]), method.build_criterion(cfg), [], StepContext())
    from e2mc.methods.wav2vec2 import Settings

    fields = dict(mask_time_length=10, num_negatives=100, contrastive_logits_temperature=0.1, diversity_loss_weight=0.1)
    no_masking = type("Config", (), {**fields, "mask_time_prob": 0.0})()
    with pytest.raises(ConfigError, match="set method.mask_time_prob"):
        Settings(cfg, no_masking)
    assert (
        Settings(load_config(None, {"method.name": "wav2vec2", "method.mask_time_prob": 0.65}), no_masking).mask_prob
        == 0.65
    )


def test_gumbel_temperature_schedule():
    from e2mc.methods.wav2vec2 import gumbel_temperature

    pre = load_config(None, {"method.name": "wav2vec2"})
    assert gumbel_temperature(pre, 0) == 2.0
    assert gumbel_temperature(pre, 100_000) == pytest.approx(2 * 0.999995**100_000)
    assert gumbel_temperature(pre, 400_000) == 0.5  # BASE's 400k updates end at the floor
    cont = load_config(None, {"method.name": "wav2vec2", "mode": "continue"})
    assert gumbel_temperature(cont, 0) == gumbel_temperature(cont, 10_000) == 0.5
    large = load_config(None, {"method.name": "wav2vec2", "mode": "continue", "method.continue_gumbel_temp": 0.1})
    assert gumbel_temperature(large, 1000) == 0.1  # a start below the floor is not raised to it
    warm = load_config(None, {"method.name": "wav2vec2", "mode": "continue", "method.continue_gumbel_temp": 1.0})
    assert gumbel_temperature(warm, 1000) == pytest.approx(0.999995**1000)
