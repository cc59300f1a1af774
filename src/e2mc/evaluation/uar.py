"""Unweighted average recall (UAR, macro recall) and train-statistics standardisation.

``uar(pred, target)``: the mean over the classes present in ``target`` of each class's recall
(the share of its samples predicted as it), the bioacoustics papers' metric next to accuracy:
unlike accuracy it weighs a rare caller as much as a frequent one. ``standardize(train, *others)``:
every tensor centred and scaled per dimension with the TRAINING features' mean and standard
deviation (the test set's own statistics are never used), as kNN uses with ``eval.standardize``
and the linear probe always does.
"""

from __future__ import annotations

import torch

STD_FLOOR = 1e-6


def uar(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Macro recall of integer predictions against integer targets (classes absent from
    ``target`` are not averaged: their recall is undefined)."""
    pred, target = (x if torch.is_tensor(x) else torch.as_tensor(x, device="cpu") for x in (pred, target))
    pred, target = pred.long().flatten(), target.long().flatten()
    if pred.shape != target.shape or target.numel() == 0:
        raise ValueError(f"uar needs as many predictions as targets (>0), got {pred.numel()} and {target.numel()}")
    target = target.to(pred.device)
    c = max(int(pred.max()), int(target.max())) + 1
    support = torch.bincount(target, minlength=c).double()
    hits = torch.bincount(target[pred == target], minlength=c).double()
    present = support > 0
    return float((hits[present] / support[present]).mean())


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``[train, *others]`` in float32 minus the training mean, over the training std (floored)."""
    train = train.float()
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp_min(STD_FLOOR)
    return [(x.float().to(train.device) - mean) / std for x in (train, *others)]
