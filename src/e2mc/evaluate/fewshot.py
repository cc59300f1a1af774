"""Class-balanced subsets and k-shot logistic regression on cached features.

``balanced_subset`` draws the same number of samples from every class with a seeded generator,
so the same (labels, size, seed) always gives the same indices, on any device (the draw is made
by a CPU generator; the indices live on the labels' device). ``fewshot`` fits an
L2-regularised multinomial logistic regression on k labelled samples per class (features
standardised with the k-shot set's statistics; a fixed penalty, since there is no data left to
select one) and scores the full test set in row blocks; this is repeated for every seed and summarised as the
mean with a 95% t-interval over seeds.

Example:
    >>> import torch
    >>> y = torch.arange(10).repeat(5)
    >>> balanced_subset(y, per_class=2, seed=0).numel()
    20
"""

from __future__ import annotations

from typing import Sequence

import torch

from e2mc.errors import DataError
from e2mc.evaluate.knn import check_labelled
from e2mc.evaluate.linear import fit_logistic
from e2mc.evaluate.streaming import accuracy_per_head
from e2mc.evaluate.stats import summarize


def balanced_subset(labels, per_class: int | None = None, fraction: float | None = None, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a class-balanced subset: ``per_class`` samples of every class, or, with
    ``fraction``, ``max(1, round(fraction * N / num_classes))`` samples of every class.

    Raises ``DataError`` if a class has fewer samples than asked or labels are missing (-1).
    """
    labels = torch.as_tensor(labels, device=labels.device if torch.is_tensor(labels) else "cpu").long()
    if (per_class is None) == (fraction is None):
        raise DataError("balanced_subset: pass exactly one of per_class or fraction")
    if (labels < 0).any():
        raise DataError("balanced_subset: some labels are missing (-1); use a labelled split")
    classes = labels.unique()
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise DataError(f"balanced_subset: fraction must be in (0, 1], got {fraction}")
        per_class = max(1, round(fraction * labels.numel() / classes.numel()))
    if per_class < 1:
        raise DataError(f"balanced_subset: per_class must be >= 1, got {per_class}")
    g = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in classes.tolist():
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < per_class:
            raise DataError(f"balanced_subset: class {c} has {idx.numel()} samples, fewer than the {per_class} asked; "
                            "use fewer shots or a smaller fraction")
        # the draw is made on the CPU generator whatever the labels' device: same subset everywhere
        perm = torch.randperm(idx.numel(), generator=g, device="cpu")[:per_class]
        chosen.append(idx[perm.to(idx.device)])
    return torch.cat(chosen).sort().values


def fewshot(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    shots: Sequence[int] = (1, 5, 10, 25),
    seeds: Sequence[int] = (0, 1, 2),
    weight_decay: float = 1e-2,
    max_iter: int = 100,
    return_indices: bool = False,
) -> dict:
    """k-shot logistic-regression accuracy for every k in ``shots``, over several random draws.

    Returns ``{"top1_{k}shot": mean, "top1_{k}shot_ci95": [low, high] or None, "per_seed":
    {"top1_{k}shot": [acc per seed]}, "seeds": [...], "weight_decay": wd}`` (plus ``"indices":
    {"{k}shot": {seed: [...]}}`` with ``return_indices``).
    """
    train_y, test_y, c = check_labelled(train_x, train_y, test_x, test_y, "few-shot")
    if not seeds:
        raise DataError("few-shot: pass at least one seed")
    out: dict = {"per_seed": {}, "seeds": [int(s) for s in seeds], "weight_decay": float(weight_decay)}
    indices: dict = {}
    for k in shots:
        key = f"top1_{k}shot"
        accs = []
        for seed in seeds:
            idx = balanced_subset(train_y, per_class=int(k), seed=int(seed))
            if return_indices:
                indices.setdefault(f"{k}shot", {})[str(seed)] = idx.tolist()
            sub = train_x[idx].float()
            mean, std = sub.mean(dim=0), sub.std(dim=0).clamp_min(1e-6)  # as _standardize
            w, b = fit_logistic((sub - mean) / std, train_y[idx], c, [weight_decay], max_iter, tol=1e-6)  # as before issue 12
            # the test set is scored in row blocks (no float32 copy of a large memory-mapped test set)
            accs.append(float(accuracy_per_head(test_x, test_y, None, w, b, mean, std)[0]))
        s = summarize(accs)
        out[key] = s.mean
        out[key + "_ci95"] = None if s.low is None else [s.low, s.high]
        out["per_seed"][key] = accs
    if return_indices:
        out["indices"] = indices
    return out
