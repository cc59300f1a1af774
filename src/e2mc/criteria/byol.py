"""BYOL loss (Grill et al. 2020): the online prediction of one view regresses the target
projection of the other, both L2-normalised, symmetrised over the two views.

The official code (google-deepmind/deepmind-research ``byol/byol_experiment.py`` ``loss_fn`` and
``utils/helpers.py`` ``regression_loss``, commit 4822a45):
``loss = mean_n( ||n(p1) - n(t2)||^2 + ||n(p2) - n(t1)||^2 )`` with
``n(x) = x * rsqrt(max(sum(x^2), 1e-12))``; each term is ``2 - 2 cos``, so the loss lies in
[0, 8] (solo-learn's ``byol_loss_func`` summed over the two pairs is the same number).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from e2mc.criteria.entropy import check_views
from e2mc.errors import CriterionInputError


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True).clamp_min(1e-12))


class BYOLLoss(nn.Module):
    """``mean_n(||n(p1) - n(sg(t2))||^2 + ||n(p2) - n(sg(t1))||^2)``.

    Called with ``(p_views, t_views)``: the online predictor outputs ``[p1, p2]`` and the target
    network's projections ``[t1, t2]`` (stop-gradient: they are detached here), each (N, D). The
    loss is per sample, so no gather is needed (DDP's gradient average is the global batch's
    gradient for equal per-rank batches). Computed in float32 with autocast disabled. Logged
    terms: ``cos`` (the mean cosine of the two pairs, 1 at a perfect prediction).

    Example:
        >>> p, t = [torch.randn(8, 4)] * 2, [torch.randn(8, 4)] * 2
        >>> BYOLLoss()(p, t)["loss"].shape
        torch.Size([])
    """

    def forward(self, p_views: Sequence[torch.Tensor], t_views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the symmetric BYOL loss."""
        check_views(p_views, "BYOLLoss (p_views)", n_views=2)
        check_views(t_views, "BYOLLoss (t_views)", n_views=2)
        if p_views[0].shape != t_views[0].shape:
            raise CriterionInputError(
                f"BYOLLoss: prediction views are {tuple(p_views[0].shape)} but target views are "
                f"{tuple(t_views[0].shape)}; pass the online predictor outputs and the target projections "
                "(same shape)"
            )
        with torch.autocast(device_type=p_views[0].device.type, enabled=False):
            p1, p2 = (_normalise(p.float()) for p in p_views)
            t1, t2 = (_normalise(t.detach().float()) for t in t_views)
            per_sample = (p1 - t2).pow(2).sum(-1) + (p2 - t1).pow(2).sum(-1)
            loss = per_sample.mean()
        return {"loss": loss, "cos": (1 - loss.detach() / 4)}
