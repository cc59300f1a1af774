"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO).

Cosine similarity between L2-normalised features; each of the k nearest training samples votes
for its label with weight ``exp(sim / T)``; the class with the largest summed weight wins.
Several k are evaluated in one pass: the top ``max(ks)`` neighbours are found once and sliced
for each k. The search streams over the training bank in chunks and keeps a running top-k for
every query (memory ``n_test * k`` plus one ``chunk_size x bank_chunk`` similarity block; the full
``n_test x n_train`` matrix is never held), so a memory-mapped fp16 bank of any size works.
Neighbours with equal similarity are ordered by training index (the lower index first), so the
result does not depend on the chunk sizes.

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
    bad = nonfinite_rows(x)
    if bad:
        raise DataError(
            f"{what} features: {bad} of {x.shape[0]} rows contain NaN/inf; re-extract them "
            "(the model or checkpoint may be broken)"
        )
    if (y < 0).any():
        raise DataError(
            f"{what} labels are missing (-1) for {int((y < 0).sum())} samples; "
            "kNN/linear evaluation needs a labelled split (use a split with labels)"
        )


def all_finite(x: torch.Tensor, rows: int = 65536) -> bool:
    """``torch.isfinite(x).all()`` in row blocks (no N x D boolean copy of a large bank)."""
    return all(bool(torch.isfinite(x[i : i + rows]).all()) for i in range(0, x.shape[0], rows))


def nonfinite_rows(x: torch.Tensor, rows: int = 65536) -> int:
    """How many rows of ``x`` hold a NaN/inf, counted in row blocks."""
    return sum(int((~torch.isfinite(x[i : i + rows])).any(dim=1).sum()) for i in range(0, x.shape[0], rows))


def _order(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort rows given by similarity descending so that equal similarities are in ascending index
    order (only the rows holding equal values are re-sorted)."""
    rows = (vals[:, 1:] == vals[:, :-1]).any(dim=1).nonzero().flatten()
    if rows.numel():
        v, i = vals[rows], idx[rows]
        o = i.argsort(dim=1)
        v, i = v.gather(1, o), i.gather(1, o)
        o = v.argsort(dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = v.gather(1, o), i.gather(1, o)
    return vals, idx


def _block_topk(sim: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of a similarity block with ties broken by the lower column index,
    returned ordered by (similarity descending, index ascending); indices shifted by ``offset``."""
    k = min(k, sim.shape[1])
    kk = min(k + 1, sim.shape[1])
    vals, idx = sim.topk(kk, dim=1, largest=True, sorted=True)
    # the (k+1)-th value equals the k-th: more columns than k reach it and topk may have picked
    # any of them; take the lowest-index ones with a stable sort of those rows only
    tied = (vals[:, k] == vals[:, k - 1]) if kk > k else torch.zeros(sim.shape[0], dtype=torch.bool, device=sim.device)
    vals, idx = vals[:, :k], idx[:, :k]
    if bool(tied.any()):
        rows = tied.nonzero().flatten()
        o = sim[rows].argsort(dim=1, descending=True, stable=True)[:, :k]
        vals[rows], idx[rows] = sim[rows].gather(1, o), o
    vals, idx = _order(vals, idx)
    return vals, idx + offset


def knn_topk(
    train_x: torch.Tensor, test_x: torch.Tensor, k: int, chunk_size: int = 1024, bank_chunk: int = 32768
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and indices (n_test, k) of each query's k nearest training rows.

    Streams the bank (``bank_chunk`` rows at a time, normalised in float32 on the bank's device)
    and the queries (``chunk_size`` at a time), merging each block's top-k into a running top-k;
    ties are broken by the lower training index. Rows of both may be any float dtype (fp16
    memory-mapped banks are read chunk by chunk, never copied whole).
    """
    dev = train_x.device
    n_test = test_x.shape[0]
    best_v = torch.full((n_test, 0), float("-inf"), device=dev)
    best_i = torch.zeros((n_test, 0), dtype=torch.long, device=dev)
    queries = [F.normalize(test_x[s : s + chunk_size].to(dev).float(), dim=1) for s in range(0, n_test, chunk_size)]
    for b0 in range(0, train_x.shape[0], bank_chunk):
        bank = F.normalize(train_x[b0 : b0 + bank_chunk].to(dev).float(), dim=1)
        new_v, new_i = [], []
        for qi, q in enumerate(queries):
            s = qi * chunk_size
            v, i = _block_topk(q @ bank.T, k, b0)
            # earlier chunks hold lower indices: a stable sort on similarity keeps index order
            v, i = torch.cat([best_v[s : s + q.shape[0]], v], 1), torch.cat([best_i[s : s + q.shape[0]], i], 1)
            o = v.argsort(dim=1, descending=True, stable=True)[:, :k]
            new_v.append(v.gather(1, o))
            new_i.append(i.gather(1, o))
        best_v, best_i = torch.cat(new_v), torch.cat(new_i)
    return best_v, best_i


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
        raise DataError(
            f"{what}: train dim {train_x.shape[1]} != test dim {test_x.shape[1]}; use features of one model"
        )
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
    bank_chunk: int = 32768,
    predictions: dict | None = None,
) -> dict[int, float]:
    """Top-1 accuracy of temperature-weighted kNN for every k in ``ks``.

    Args:
        train_x, test_x: (N, D) float features (any scale; they are L2-normalised here).
        train_y, test_y: (N,) int labels in ``[0, num_classes)``.
        ks: neighbour counts, evaluated together from one top-``max(ks)`` search.
        temperature: T in the vote weight ``exp(sim / T)``.
        chunk_size: queries per similarity block.
        bank_chunk: training rows per similarity block; memory is about
            ``chunk_size * bank_chunk * 4`` bytes plus ``n_test * max(ks) * 12`` for the running top-k.
        num_classes: defaults to ``max(label) + 1``.
        predictions: a dict filled with ``{k: predicted labels (n_test,)}`` (e.g. for UAR).

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
        warnings.warn(
            f"kNN: k={', '.join(map(str, big))} > the {n_train} training samples; using k={n_train} "
            f"(reported as top1_k{n_train}); pass smaller ks (CLI: --ks) to choose",
            stacklevel=2,
        )
        ks = sorted({min(k, n_train) for k in ks})
    if temperature <= 0:
        raise DataError(f"kNN: temperature must be > 0, got {temperature}")

    preds = _vote(train_x, train_y, test_x, ks, temperature, c, chunk_size, bank_chunk)
    test_y = test_y.to(preds[ks[0]].device)
    out = {k: int((preds[k] == test_y).sum()) / test_y.shape[0] for k in ks}
    if predictions is not None:
        predictions.update(preds)
    return out


def _vote(train_x, train_y, test_x, ks, temperature, c, chunk_size, bank_chunk) -> dict[int, torch.Tensor]:
    """``{k: predicted labels (n_test,)}``: temperature-weighted votes of the k nearest rows."""
    top_sim, top_idx = knn_topk(train_x, test_x, ks[-1], chunk_size, bank_chunk)
    dev = top_sim.device
    train_y = train_y.to(dev)
    preds: dict[int, list] = {k: [] for k in ks}
    for start in range(0, top_sim.shape[0], chunk_size):
        top_lab = train_y[top_idx[start : start + chunk_size]]
        weight = (top_sim[start : start + chunk_size] / temperature).exp()
        for k in ks:
            votes = torch.zeros(top_lab.shape[0], c, dtype=weight.dtype, device=dev)
            votes.scatter_add_(1, top_lab[:, :k], weight[:, :k])
            preds[k].append(votes.argmax(dim=1))
    return {k: torch.cat(v) for k, v in preds.items()}
