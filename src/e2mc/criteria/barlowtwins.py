"""Barlow Twins loss (Zbontar, Jing, Misra, LeCun & Deny, ICML 2021): the cross-correlation of the
two views' batch-normalised projections, pulled towards the identity.

With ``zn = BN(z)`` (per-feature batch statistics over the whole batch of one view, no affine)
and ``C = zn1^T zn2 / N``: ``on_diag = sum_i (1 - C_ii)^2``, ``off_diag = sum_{i != j} C_ij^2``,
``loss = on_diag + lambd * off_diag``. As facebookresearch/barlowtwins ``main.py`` (commit
8e8d284): ``c = bn(z1).T @ bn(z2)``, ``c.div_(batch_size)`` with the GLOBAL batch size,
``all_reduce(c)``, its ``bn`` a ``BatchNorm1d(affine=False)`` made a SyncBatchNorm, so its
statistics are the global batch's.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.criteria.entropy import check_views
from e2mc.distributed import gather_with_grad


def batch_norm(z: torch.Tensor, bn: nn.Module | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``z`` (N, D) normalised per feature as ``bn`` (a ``BatchNorm1d``/``SyncBatchNorm``) would in
    its current mode, computed here in ``z``'s dtype from ``bn``'s buffers and settings: in train
    mode the batch's statistics (biased variance) and an update of ``running_mean``/``running_var``
    (unbiased) and ``num_batches_tracked``, as ``nn.BatchNorm1d.forward``; in eval mode the running
    statistics. No collective: the caller passes the whole (gathered) batch, which is what a
    SyncBatchNorm normalises with. ``bn=None``: batch statistics, nothing updated."""
    if bn is None:
        return F.batch_norm(z, None, None, training=True, momentum=0.0, eps=eps)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch = bn.training or bn.running_mean is None
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(
        z,
        bn.running_mean if track else None,
        bn.running_var if track else None,
        bn.weight,
        bn.bias,
        use_batch,
        momentum,
        bn.eps,
    )


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square (D, D) matrix, flattened (a view, no copy)."""
    d = c.shape[0]
    return c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins criterion on two views' projector outputs ``[z1, z2]`` (each (N, D)).

    ``forward(views, bn=None)``: ``bn`` is the model's affine-free ``BatchNorm1d`` head (its
    running statistics are updated in train mode, used in eval mode); ``None`` normalises with
    the batch statistics and updates nothing (a measurement). Returns ``{"loss", "on_diag",
    "off_diag"}`` (``off_diag`` unweighted).

    With ``gather=True`` (default) both views are gathered across ranks (with gradient) first, so
    under ``torchrun`` the normalisation and ``C`` are those of the concatenated global batch, the
    official SyncBatchNorm + ``all_reduce(c)`` values, on CPU too; the loss is then every rank's
    global loss and DDP's average of the gradients is the single-process gradient on the
    concatenated batch. (The official ``all_reduce`` carries no gradient, so its multi-GPU
    gradient is that divided by the number of GPUs.) Computed in float32 with autocast disabled.

    Example:
        >>> out = BarlowTwinsLoss()([torch.randn(32, 16), torch.randn(32, 16)])
        >>> sorted(out)
        ['loss', 'off_diag', 'on_diag']
    """

    def __init__(self, lambd: float = 0.0051, gather: bool = True) -> None:
        super().__init__()
        self.lambd = float(lambd)
        self.gather = bool(gather)

    def forward(self, views: Sequence[torch.Tensor], bn: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Compute the Barlow Twins loss of ``[z1, z2]``."""
        check_views(views, "BarlowTwinsLoss", n_views=2)
        with torch.autocast(device_type=views[0].device.type, enabled=False):
            z1, z2 = (gather_with_grad(v) if self.gather else v for v in views)
            n = z1.shape[0]
            c = batch_norm(z1.float(), bn).T @ batch_norm(z2.float(), bn) / n
            on = (torch.diagonal(c) - 1).pow(2).sum()
            off = off_diagonal(c).pow(2).sum()
            loss = on + self.lambd * off
        return {"loss": loss, "on_diag": on.detach(), "off_diag": off.detach()}
