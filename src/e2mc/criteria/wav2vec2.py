"""wav2vec 2.0's pre-training loss (Baevski et al., NeurIPS 2020): contrastive + diversity.

Per view (one crop of a batch of recordings; the masking, the quantisation and the negatives are
the method's, :mod:`e2mc.methods.wav2vec2`): ``c`` (N, T, D) the transformer output of every frame
through ``project_hid``, ``q`` (N, T, D) the quantised CNN features through ``project_q``,
``negatives`` (N, T, K) flat indices into ``q.view(N * T, D)`` (transformers'
``_sample_negative_indices``: K other masked frames of the same recording), ``mask`` (N, T) bool,
the masked frames, and ``perplexity`` (0-d) of the quantiser's soft code distribution over the
masked frames, summed over its G groups.

As ``transformers.Wav2Vec2ForPreTraining.forward`` computes it: logits ``cos(c_t, [q_t, q~_1..K])
/ temperature`` (``compute_contrastive_logits``), a negative equal to its positive masked to -inf,
cross-entropy against index 0 summed over the masked frames; diversity ``(G V - perplexity) /
(G V)`` times the number of masked frames; ``L = L_m + diversity_weight * L_d``. e2mc divides by
the number of masked frames (transformers' pre-training script and fairseq divide the summed loss
by it too), so the loss is per masked frame whatever the crop, and averages it over the views.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.errors import CriterionInputError


def contrastive_sum(c: torch.Tensor, q: torch.Tensor, negatives: torch.Tensor, mask: torch.Tensor, temperature):
    """``(summed cross-entropy over the masked frames, number of masked frames)`` of one view."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2ForPreTraining

    n, t, d = q.shape
    k = negatives.shape[-1]
    neg = q.reshape(-1, d)[negatives.long().reshape(-1)].view(n, t, k, d).permute(2, 0, 1, 3)
    logits = Wav2Vec2ForPreTraining.compute_contrastive_logits(q[None], neg, c, temperature)  # (K + 1, N, T)
    neg_is_pos = (q == neg).all(-1)  # a negative equal to its positive (a small codebook in use): left out
    logits = torch.cat([logits[:1], logits[1:].masked_fill(neg_is_pos, float("-inf"))])  # no host sync
    logits = logits.transpose(0, 2).reshape(-1, k + 1)
    target = ((1 - mask.long()) * -100).transpose(0, 1).flatten()
    return F.cross_entropy(logits.float(), target, reduction="sum"), mask.sum()


class Wav2Vec2Loss(nn.Module):
    """``(c_views, q_views, negative_views, mask_views, perplexities) -> {"loss", "contrastive",
    "diversity", "perplexity", "masked"}``: the mean over views of ``(L_m + diversity_weight * L_d)
    / masked frames``; terms: ``contrastive`` (cross-entropy per masked frame), ``diversity``
    (``(G V - perplexity) / (G V)``), ``perplexity``, ``masked`` (the fraction of frames masked).
    ``num_codevectors``: G x V of the quantiser. Computed in float32, autocast off.

    Example:
        >>> c, q = torch.randn(2, 12, 4), torch.randn(2, 12, 4)
        >>> mask = torch.zeros(2, 12, dtype=torch.bool); mask[:, 2:8] = True
        >>> neg = torch.randint(0, 24, (2, 12, 3))
        >>> out = Wav2Vec2Loss(num_codevectors=8)([c], [q], [neg], [mask], [torch.tensor(5.0)])
        >>> sorted(out)
        ['contrastive', 'diversity', 'loss', 'masked', 'perplexity']
    """

    def __init__(self, temperature: float = 0.1, diversity_weight: float = 0.1, num_codevectors: int = 640):
        super().__init__()
        self.temperature = float(temperature)
        self.diversity_weight = float(diversity_weight)
        self.num_codevectors = int(num_codevectors)

    def forward(
        self,
        c_views: Sequence[torch.Tensor],
        q_views: Sequence[torch.Tensor],
        negative_views: Sequence[torch.Tensor],
        mask_views: Sequence[torch.Tensor],
        perplexities: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The loss averaged over the views (see the class docstring)."""
        views = list(zip(c_views, q_views, negative_views, mask_views, perplexities))
        if not views or len({len(c_views), len(q_views), len(negative_views), len(mask_views), len(perplexities)}) != 1:
            raise CriterionInputError(
                "Wav2Vec2Loss needs the same number (>= 1) of c, q, negative, mask and perplexity views"
            )
        terms: dict[str, list] = {k: [] for k in ("loss", "contrastive", "diversity", "perplexity", "masked")}
        gv = float(self.num_codevectors)
        for c, q, neg, mask, ppl in views:
            if c.shape != q.shape or mask.shape != c.shape[:2] or neg.shape[:2] != c.shape[:2]:
                raise CriterionInputError(
                    f"Wav2Vec2Loss: c {tuple(c.shape)}, q {tuple(q.shape)}, negatives {tuple(neg.shape)} and "
                    f"mask {tuple(mask.shape)} must share (N, T); pass one view's tensors of one crop"
                )
            with torch.autocast(device_type=c.device.type, enabled=False):
                ce, n = contrastive_sum(c.float(), q.float(), neg, mask.bool(), self.temperature)
                n = n.clamp_min(1).float()
                diversity = (gv - ppl.float()) / gv
                terms["loss"].append((ce + self.diversity_weight * diversity * n) / n)
            terms["contrastive"].append((ce / n).detach())
            terms["diversity"].append(diversity.detach())
            terms["perplexity"].append(ppl.detach().float())
            terms["masked"].append(n / mask.numel())
        return {k: torch.stack(v).mean() for k, v in terms.items()}
