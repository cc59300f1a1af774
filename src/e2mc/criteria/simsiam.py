"""SimSiam loss (Chen & He 2021): symmetric negative cosine with stop-gradient on z."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.criteria.entropy import check_views
from e2mc.errors import CriterionInputError


class SimSiamLoss(nn.Module):
    """``loss = -(cos(p1, sg(z2)).mean() + cos(p2, sg(z1)).mean()) / 2``.

    Called with ``(z_views, p_views)``: the projector outputs ``[z1, z2]`` and the predictor
    outputs ``[p1, p2]``, each (N, D). The loss is per sample, so no gather is needed (DDP's
    gradient averaging gives the global-batch gradient for equal per-rank batches). Computed in
    float32 with autocast disabled.

    Example:
        >>> z, p = [torch.randn(8, 4)] * 2, [torch.randn(8, 4)] * 2
        >>> SimSiamLoss()(z, p)["loss"].shape
        torch.Size([])
    """

    def forward(self, z_views: Sequence[torch.Tensor], p_views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the symmetric SimSiam loss."""
        check_views(z_views, "SimSiamLoss (z_views)", n_views=2)
        check_views(p_views, "SimSiamLoss (p_views)", n_views=2)
        if z_views[0].shape != p_views[0].shape:
            raise CriterionInputError(
                f"SimSiamLoss: z views are {tuple(z_views[0].shape)} but p views are "
                f"{tuple(p_views[0].shape)}; pass projector outputs z and predictor outputs p "
                "of the same shape"
            )
        with torch.autocast(device_type=z_views[0].device.type, enabled=False):
            z1, z2 = (z.detach().float() for z in z_views)
            p1, p2 = (p.float() for p in p_views)
            loss = -(F.cosine_similarity(p1, z2, dim=1).mean() + F.cosine_similarity(p2, z1, dim=1).mean()) / 2
        return {"loss": loss}
