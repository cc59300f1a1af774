"""MoCo v3 loss (Chen, Xie & He 2021): symmetric InfoNCE of the online predictions against the
momentum encoder's keys of the other view, scaled by ``2T``."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.criteria.entropy import check_views
from e2mc.distributed import gather_no_grad, rank
from e2mc.errors import ConfigError, CriterionInputError


def contrastive_loss(q: torch.Tensor, k_all: torch.Tensor, temperature: float, offset: int = 0) -> torch.Tensor:
    """``CE(normalize(q) @ normalize(k_all).T / T, offset + arange(N)) * 2T`` (the official
    ``contrastive_loss``): ``k_all`` holds the keys of every process (gathered, no gradient) and
    ``offset`` = rank * N is where this process's rows are in it, so row i has its positive at its
    own global index."""
    q, k_all = F.normalize(q, dim=1), F.normalize(k_all.detach(), dim=1)
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(q @ k_all.T / temperature, labels) * (2 * temperature)


class MoCoV3Loss(nn.Module):
    """``loss = ctr(q1, k2) + ctr(q2, k1)`` (official ``MoCo.forward``).

    Called with ``(q_views, k_views)``: the predictor outputs ``[q1, q2]`` of the online network
    and the momentum encoder's projections ``[k1, k2]`` of the same views (no gradient), each
    (N, D). Under ``torchrun`` (``gather=True``) the keys of all processes are the negatives and
    each process's loss is the mean over its own rows; DDP's gradient average is then the gradient
    of the single-process loss on the concatenated batch. Computed in float32, autocast disabled.

    Example:
        >>> q, k = [torch.randn(8, 4)] * 2, [torch.randn(8, 4)] * 2
        >>> MoCoV3Loss(temperature=0.2)(q, k)["loss"].shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 1.0, gather: bool = True):
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"MoCoV3Loss: temperature must be > 0, got {temperature}; use e.g. 1.0 or 0.2")
        self.temperature = float(temperature)
        self.gather = gather

    def forward(self, q_views: Sequence[torch.Tensor], k_views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the symmetric MoCo v3 loss."""
        check_views(q_views, "MoCoV3Loss (q_views)", n_views=2)
        check_views(k_views, "MoCoV3Loss (k_views)", n_views=2)
        if q_views[0].shape != k_views[0].shape:
            raise CriterionInputError(
                f"MoCoV3Loss: q views are {tuple(q_views[0].shape)} but k views are {tuple(k_views[0].shape)}; "
                "pass predictor outputs q and momentum-encoder outputs k of the same shape"
            )
        with torch.autocast(device_type=q_views[0].device.type, enabled=False):
            q1, q2 = (q.float() for q in q_views)
            k1, k2 = (k.detach().float() for k in k_views)
            offset = 0
            if self.gather:  # both views' keys in one all_gather (packed column-wise)
                d, offset = k1.shape[1], rank() * q1.shape[0]
                k1, k2 = gather_no_grad(torch.cat([k1, k2], dim=1)).split(d, dim=1)
            t = self.temperature
            loss = contrastive_loss(q1, k2, t, offset) + contrastive_loss(q2, k1, t, offset)
        return {"loss": loss}
