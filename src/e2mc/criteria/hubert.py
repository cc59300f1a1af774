"""HuBERT's masked prediction (Hsu et al., 2021), pure math.

fairseq ``examples/hubert`` (commit 2f5784c): the frame targets are k-means cluster indices
(``simple_kmeans/dump_km_label.py`` ``ApplyKmeans``: the nearest centroid in squared Euclidean
distance); ``models/hubert/hubert.py`` ``compute_nce`` scores each frame's ``final_proj`` output
against every label embedding by cosine similarity divided by ``logit_temp`` (0.1), and
``criterions/hubert_criterion.py`` sums the cross-entropy over the masked frames (times
``pred_masked_weight``, 1) and over the unmasked frames (times ``pred_nomask_weight``, 0), plus
``loss_weights`` x the squared mean of the CNN features (``features_pen``; 10 for HuBERT base)
times ``sample_size``, and divides by ``sample_size``: the masked frames' count (when
``pred_masked_weight`` > 0) plus the unmasked frames' count (when ``pred_nomask_weight`` > 0).
Here ``sample_size`` is this process's (fairseq divides by the sum over its workers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.errors import CriterionInputError


def assign_clusters(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of every row of ``x`` (..., D) among ``centroids`` (K, D):
    ``argmin_k ||x - c_k||^2`` computed as ``x^2 - 2 x C^T + C^2`` (ApplyKmeans), in float32."""
    if x.shape[-1] != centroids.shape[-1]:
        raise CriterionInputError(
            f"features of width {x.shape[-1]} cannot be assigned to centroids of width {centroids.shape[-1]}"
        )
    flat = x.reshape(-1, x.shape[-1]).float()
    c = centroids.float()
    dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ c.t() + c.pow(2).sum(1).unsqueeze(0)
    return dist.argmin(1).reshape(x.shape[:-1])


def cosine_logits(proj: torch.Tensor, label_embs: torch.Tensor, logit_temp: float) -> torch.Tensor:
    """``cos(proj_t, e_c) / logit_temp`` for every frame t and label c: (..., F) x (K, F) -> (..., K)."""
    return (
        F.normalize(proj.float(), dim=-1, eps=1e-8) @ F.normalize(label_embs.float(), dim=-1, eps=1e-8).t() / logit_temp
    )


class HuBERTLoss(nn.Module):
    """``(proj (N, T, F), label_embs (K, F), targets (N, T) long, mask (N, T) bool, features_pen=None)
    -> {"loss", "masked", "unmasked", "acc_masked", "masked_frames", "features_pen"}``: the terms are
    the mean cross-entropies over the masked and the unmasked frames, the accuracy of the masked
    frames' argmax, the fraction of frames masked and the penalty given (unweighted)."""

    def __init__(
        self,
        logit_temp: float = 0.1,
        pred_masked_weight: float = 1.0,
        pred_nomask_weight: float = 0.0,
        feature_pen_weight: float = 10.0,
    ):
        super().__init__()
        self.logit_temp = float(logit_temp)
        self.pred_masked_weight = float(pred_masked_weight)
        self.pred_nomask_weight = float(pred_nomask_weight)
        self.feature_pen_weight = float(feature_pen_weight)

    def forward(self, proj, label_embs, targets, mask, features_pen=None) -> dict:
        if proj.dim() != 3 or targets.shape != proj.shape[:2] or mask.shape != targets.shape:
            raise CriterionInputError(
                f"HuBERT's loss takes projections (N, T, F) with targets and mask (N, T); got "
                f"{tuple(proj.shape)}, {tuple(targets.shape)}, {tuple(mask.shape)}"
            )
        with torch.autocast(proj.device.type, enabled=False):
            logits = cosine_logits(proj, label_embs, self.logit_temp)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
            m = mask.reshape(-1)
            n_m, n_u = m.sum(), (~m).sum()
            sum_m, sum_u = (ce * m).sum(), (ce * ~m).sum()
            loss = self.pred_masked_weight * sum_m + self.pred_nomask_weight * sum_u
            size = n_m * (self.pred_masked_weight > 0) + n_u * (self.pred_nomask_weight > 0)
            loss = loss / size.clamp_min(1)
            pen = features_pen.float() if features_pen is not None else logits.new_zeros(())
            loss = loss + self.feature_pen_weight * pen
            hit = (logits.reshape(-1, logits.shape[-1]).argmax(1) == targets.reshape(-1)) & m
        return {
            "loss": loss,
            "masked": sum_m / n_m.clamp_min(1),
            "unmasked": sum_u / n_u.clamp_min(1),
            "acc_masked": hit.sum() / n_m.clamp_min(1),
            "masked_frames": n_m / m.numel(),
            "features_pen": pen.detach(),
        }
