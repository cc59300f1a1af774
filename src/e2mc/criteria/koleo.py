"""KoLeo (Kozachenko-Leonenko) entropy regulariser of DINOv2 (Sablayrolles et al., 2019).

For each view's L2-normalised rows ``x_n`` (N, D), with ``m(n)`` the row of largest inner product
other than ``n`` (its nearest neighbour on the sphere):

    koleo(x) = -mean_n log(||x_n - x_m(n) + 1e-8||_2 + 1e-8)

(facebookresearch/dinov2 ``dinov2/loss/koleo_loss.py`` ``KoLeoLoss``: ``F.normalize(eps=1e-8)``,
``nn.PairwiseDistance(2, eps=1e-8)``, ``-log(d + 1e-8)``; ``ssl_meta_arch.py`` sums it over the 2
global crops' class tokens, each crop alone, per process, times ``koleo_loss_weight`` 0.1).
Computed in float32 with autocast disabled.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.criteria.entropy import check_views


def koleo(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo of one view's rows (N >= 2); see the module docstring."""
    x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-1.0)
        nearest = dots.argmax(dim=1)
    dist = torch.linalg.vector_norm(x - x[nearest] + eps, dim=-1)  # nn.PairwiseDistance(2, eps)
    return -torch.log(dist + eps).mean()


class KoLeoLoss(nn.Module):
    """Sum over views of :func:`koleo` (each view alone): ``(views) -> {"loss", "koleo"}`` (views of
    at least 2 rows: ``check_views``).

    Example:
        >>> KoLeoLoss()([torch.eye(3), torch.eye(3)])["loss"].item() == 2 * -torch.log(torch.tensor(2.0).sqrt()).item()
        True
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = float(eps)

    def forward(self, views: Sequence[torch.Tensor]) -> dict:
        check_views(views, "KoLeoLoss")
        with torch.autocast(views[0].device.type, enabled=False):
            loss = sum(koleo(v, self.eps) for v in views)
        return {"loss": loss, "koleo": loss.detach()}
