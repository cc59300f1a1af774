"""k-shot logistic regression on cached features.

The k-shot sets come from :func:`e2mc.data.splits.balanced_subset` (seeded, class-balanced, the
same indices on any device). ``fewshot`` fits an
L2-regularised multinomial logistic regression on k labelled samples per class (features
standardised with the k-shot set's statistics; a fixed penalty, since there is no data left to
select one) and scores the full test set in row blocks; this is repeated for every seed and summarised as the
mean with a 95% t-interval over seeds.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from e2mc.data.splits import balanced_subset
from e2mc.errors import DataError
from e2mc.evaluation.knn import check_labelled
from e2mc.evaluation.linear import fit_logistic
from e2mc.evaluation.stats import summarize
from e2mc.evaluation.streaming import accuracy_per_head


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
    counts = torch.bincount(train_y.long().cpu())
    fewest = int(counts[counts > 0].min())
    big = [int(k) for k in shots if int(k) > fewest]
    if big:  # as kNN's k above the training set: left out with a warning, not the whole evaluation lost
        shots = [k for k in shots if int(k) <= fewest]
        if not shots:
            raise DataError(
                f"few-shot: the smallest class of the training split has {fewest} samples, fewer than every "
                f"k asked ({', '.join(map(str, big))}); set eval.fewshot.shots=[1,{fewest}] or leave fewshot out"
            )
        warnings.warn(
            f"few-shot: k={', '.join(map(str, big))} > the {fewest} samples of the smallest training class; "
            f"left out (eval.fewshot.shots chooses)",
            stacklevel=2,
        )
    for k in shots:
        key = f"top1_{k}shot"
        accs = []
        for seed in seeds:
            idx = balanced_subset(train_y, per_class=int(k), seed=int(seed))
            if return_indices:
                indices.setdefault(f"{k}shot", {})[str(seed)] = idx.tolist()
            sub = train_x[idx].float()
            mean, std = sub.mean(dim=0), sub.std(dim=0).clamp_min(1e-6)  # as _standardize
            w, b = fit_logistic(
                (sub - mean) / std, train_y[idx], c, [weight_decay], max_iter, tol=1e-6
            )  # as before issue 12
            # the test set is scored in row blocks (no float32 copy of a large memory-mapped test set)
            accs.append(float(accuracy_per_head(test_x, test_y, None, w, b, mean, std)[0]))
        s = summarize(accs)
        out[key] = s.mean
        out[key + "_ci95"] = None if s.low is None else [s.low, s.high]
        out["per_seed"][key] = accs
    if return_indices:
        out["indices"] = indices
    return out
