"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO).

Cosine similarity between L2-normalised features; each of the k nearest training samples votes
for its label with weight ``exp(sim / T)``; the class with the largest summed weight wins.
Several k are evaluated in one pass: the top ``max(ks)`` neighbours are found once per query
chunk and sliced for each k.

Policy for bad input: a k larger than the number of training samples is clipped to that number
with a warning, and the result is keyed by the k actually used (asking for k=200 with 84 training
samples gives the key 84, never 200); missing labels (-1), a training set with one class only and
non-finite features raise ``DataError``. Everything is computed on the features' device.

Example:
    >>> import torch
    >>> x = torch.randn(100, 8); y = (x[:, 0] > 0).long()
    >>> acc = knn_classify(x, y, x, y, ks=(1, 5))
    >>> acc[1]
    1.0
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from e2mc.errors import DataError


def check_features(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Validate a (N, D) feature matrix and its (N,) labels; raise ``DataError`` if unusable."""
    if x.dim() != 2:
        raise DataError(f"{what} features must be 2-D (N, D), got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{what}: {x.shape[0]} feature rows but labels of shape {tuple(y.shape)}; they must match")
    if x.shape[0] == 0:
        raise DataError(f"{what} set is empty; check the dataset split")
    if not torch.isfinite(x).all():
        raise DataError(f"{what} features contain NaN/inf; re-extract them (the model or checkpoint may be broken)")
    if (y < 0).any():
        raise DataError(
            f"{what} labels are missing (-1) for {int((y < 0).sum())} samples; "
            "kNN/linear evaluation needs a labelled split (use a split with labels)"
        )


def check_labelled(train_x, train_y, test_x, test_y, what: str, num_classes: int | None = None):
    """Validate a labelled train/test feature pair for a supervised protocol.

    Returns ``(train_y, test_y, num_classes)`` with the labels as int64 tensors; raises
    ``DataError`` for unusable features or labels, or a training set with one class only.
    """
    train_y = torch.as_tensor(train_y, device=train_x.device).long()  # labels live with the features
    test_y = torch.as_tensor(test_y, device=test_x.device).long()
    check_features(train_x, train_y, f"{what} train")
    check_features(test_x, test_y, f"{what} test")
    if train_x.shape[1] != test_x.shape[1]:
        raise DataError(f"{what}: train dim {train_x.shape[1]} != test dim {test_x.shape[1]}; use features of one model")
    if train_y.unique().numel() < 2:
        raise DataError(f"{what}: the training labels contain one class only; accuracy would be meaningless")
    c = int(num_classes) if num_classes is not None else int(max(train_y.max(), test_y.max())) + 1
    return train_y, test_y, c


def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
    num_classes: int | None = None,
) -> dict[int, float]:
    """Top-1 accuracy of temperature-weighted kNN for every k in ``ks``.

    Args:
        train_x, test_x: (N, D) float features (any scale; they are L2-normalised here).
        train_y, test_y: (N,) int labels in ``[0, num_classes)``.
        ks: neighbour counts, evaluated together from one top-``max(ks)`` search.
        temperature: T in the vote weight ``exp(sim / T)``.
        chunk_size: queries per similarity block; memory is about ``chunk_size * N_train * 4`` bytes.
        num_classes: defaults to ``max(label) + 1``.

    Returns:
        ``{k: accuracy in [0, 1]}`` for the k used (each asked k clipped to the training size).
    """
    train_y, test_y, c = check_labelled(train_x, train_y, test_x, test_y, "kNN", num_classes)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise DataError(f"kNN: ks must be positive integers, got {ks}")
    n_train = train_x.shape[0]
    if ks[-1] > n_train:
        big = [k for k in ks if k > n_train]
        warnings.warn(f"kNN: k={', '.join(map(str, big))} > the {n_train} training samples; using k={n_train} "
                      f"(reported as top1_k{n_train}); pass smaller ks (CLI: --ks) to choose", stacklevel=2)
        ks = sorted({min(k, n_train) for k in ks})
    if temperature <= 0:
        raise DataError(f"kNN: temperature must be > 0, got {temperature}")

    train_n = F.normalize(train_x.float(), dim=1)
    test_n = F.normalize(test_x.float().to(train_n.device), dim=1)
    train_y, test_y = train_y.to(train_n.device), test_y.to(train_n.device)
    kmax = ks[-1]
    correct = {k: 0 for k in ks}
    for start in range(0, test_n.shape[0], chunk_size):
        q = test_n[start : start + chunk_size]
        top_sim, top_idx = (q @ train_n.T).topk(kmax, dim=1, largest=True, sorted=True)
        top_lab = train_y[top_idx]
        weight = (top_sim / temperature).exp()
        target = test_y[start : start + chunk_size]
        for k in ks:
            votes = torch.zeros(q.shape[0], c, dtype=weight.dtype, device=weight.device)
            votes.scatter_add_(1, top_lab[:, :k], weight[:, :k])
            correct[k] += int((votes.argmax(dim=1) == target).sum())
    n_test = test_n.shape[0]
    return {k: correct[k] / n_test for k in ks}
