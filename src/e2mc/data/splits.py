"""Split files: named index subsets of one split of a dataset, usable as a dataset spec.

A split file is JSON ``{"format": "e2mc-split", "version": 1, "dataset": SPEC, "source_split":
"train", "n_source": N, "seed": S, "splits": {"train": [...], "test": [...]}}``. Passing its path
as the dataset spec (``build_dataset("holdout.json", "train")``, ``data.dataset=holdout.json``,
``evaluate(ckpt, "holdout.json")``) gives the rows of ``source_split`` listed under that split
name. This is how hyperparameters are chosen on a held-out part of a TRAINING split: train on
``"train"`` (e.g. 45,000 CIFAR-10 images), evaluate on ``"test"`` (the other 5,000), and never
touch the real test split while choosing.

The subset keeps the source's normalisation statistics (``info.mean/std``), so a model sees the
same input scale in both parts; ``info.name`` carries a digest of the indices, so cached
features of different split files never collide.

Example:
    >>> keep, held = stratified_holdout([0, 0, 0, 0, 1, 1, 1, 1], 4, seed=0)
    >>> len(keep), len(held), sorted(set(keep) | set(held)) == list(range(8))
    (4, 4, True)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from e2mc.errors import DataError
from e2mc.fileio import atomic_write_text

FORMAT = "e2mc-split"


def stratified_holdout(targets: Sequence[int], n_holdout: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded stratified split of ``range(len(targets))`` into (keep, holdout), both sorted.

    Each class gives ``n_holdout * share`` rows to the holdout (largest-remainder rounding, so the
    total is exactly ``n_holdout``), drawn by a permutation seeded with ``seed``.
    """
    n = len(targets)
    if not 0 < int(n_holdout) < n:
        raise DataError(f"n_holdout must be between 1 and {n - 1} (the split has {n} rows), got {n_holdout}.")
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    classes = sorted(by_class)
    exact = [n_holdout * len(by_class[c]) / n for c in classes]
    quota = [int(q) for q in exact]
    order = sorted(range(len(classes)), key=lambda j: (-(exact[j] - quota[j]), classes[j]))
    for j in order[: n_holdout - sum(quota)]:
        quota[j] += 1
    g = torch.Generator().manual_seed(int(seed))
    holdout: list[int] = []
    for c, q in zip(classes, quota):
        rows = by_class[c]
        perm = torch.randperm(len(rows), generator=g).tolist()
        holdout.extend(rows[p] for p in perm[:q])
    held = set(holdout)
    return [i for i in range(n) if i not in held], sorted(holdout)


def digest(indices: Sequence[int]) -> str:
    """Short sha256 of an index list (identifies a subset in cache keys and names)."""
    return hashlib.sha256(json.dumps([int(i) for i in indices]).encode()).hexdigest()[:10]


def write_split_file(
    path: str | os.PathLike,
    dataset: str,
    targets: Sequence[int],
    n_holdout: int,
    seed: int = 0,
    source_split: str = "train",
    n_keep: int | None = None,
) -> Path:
    """Write a split file whose ``"test"`` is a stratified holdout of ``n_holdout`` rows and whose
    ``"train"`` is the rest; ``targets`` are the labels of ``dataset``'s ``source_split``.
    ``n_keep``: keep only that many of the rest in ``"train"`` (a stratified draw seeded by ``seed + 1``)."""
    keep, held = stratified_holdout(targets, n_holdout, seed)
    if n_keep is not None and n_keep < len(keep):
        _, sub = stratified_holdout([targets[i] for i in keep], int(n_keep), seed + 1)
        keep = [keep[j] for j in sub]
    obj = {
        "format": FORMAT,
        "version": 1,
        "dataset": str(dataset),
        "source_split": source_split,
        "n_source": len(targets),
        "seed": int(seed),
        "splits": {"train": keep, "test": held},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(obj))


def is_split_file(spec) -> bool:
    """True when ``spec`` is the path of a JSON split file."""
    s = str(spec)
    return s.endswith(".json") and os.path.isfile(os.path.expanduser(s))


def read_split_file(path: str | os.PathLike) -> dict:
    """Parse and check a split file; DataError naming what is wrong."""
    try:
        obj = json.loads(Path(path).expanduser().read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("splits"), dict):
        raise DataError(
            f"{path} is not an e2mc split file (needs format={FORMAT!r} and 'splits'); "
            "write one with e2mc.data.splits.write_split_file"
        )
    return obj


def split_dataset(path, split: str, build: Callable[[str, str], object]):
    """The rows of split file ``path`` listed under ``split``; ``build(spec, split)`` builds the source."""
    obj = read_split_file(path)
    if split not in obj["splits"]:
        raise DataError(f"split file {path} has splits {sorted(obj['splits'])}, not {split!r}.")
    source = build(obj["dataset"], obj.get("source_split", "train"))
    if not hasattr(source, "subset"):
        raise DataError(f"split files need an in-memory dataset; {obj['dataset']} streams from disk.")
    n_source = obj.get("n_source")
    if n_source is not None and len(source) != int(n_source):
        raise DataError(
            f"split file {path} was written for {n_source} rows of {obj['dataset']} "
            f"({obj.get('source_split')}), which now has {len(source)}; write a new split file."
        )
    idx = [int(i) for i in obj["splits"][split]]
    if idx and (min(idx) < 0 or max(idx) >= len(source)):
        raise DataError(f"split file {path}: indices outside 0..{len(source) - 1}.")
    ds = source.subset(idx)
    ds.info.name = f"{source.info.name}@{digest(idx)}"
    ds.info.split = split
    return ds


def balanced_subset(labels, per_class: int | None = None, fraction: float | None = None, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a class-balanced subset: ``per_class`` samples of every class, or, with
    ``fraction``, ``max(1, round(fraction * N / num_classes))`` samples of every class.

    The draw uses a CPU generator seeded with ``seed``, so the same (labels, size, seed) gives the
    same indices on any device (they live on the labels' device). Raises ``DataError`` if a class
    has fewer samples than asked or labels are missing (-1).

    >>> y = torch.arange(10).repeat(5)
    >>> balanced_subset(y, per_class=2, seed=0).numel()
    20
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
            raise DataError(
                f"balanced_subset: class {c} has {idx.numel()} samples, fewer than the {per_class} asked; "
                "use fewer shots or a smaller fraction"
            )
        # the draw is made on the CPU generator whatever the labels' device: same subset everywhere
        perm = torch.randperm(idx.numel(), generator=g, device="cpu")[:per_class]
        chosen.append(idx[perm.to(idx.device)])
    return torch.cat(chosen).sort().values
