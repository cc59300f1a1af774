"""A dataset's identity, kept in training checkpoints so that ``--resume`` notices changed data.

``fingerprint(dataset) -> {"n", "kind", "digest"}``:

- in-memory datasets (``ArrayDataset``: digits, CIFAR, STL-10, small image folders): SHA-256 of
  the decoded uint8 pixels and the labels (every row up to 256 MiB of pixels; beyond that 65,536
  evenly spaced rows plus every label), so a folder moved elsewhere keeps its fingerprint and an
  image added, removed or replaced changes it;
- streaming folders (``StreamingImageFolder``: ImageNet, large folders): SHA-256 of each file's
  ``<class folder>/<file name>`` and label, and its size (one ``stat`` per file) for folders of
  up to 200,000 files (larger ones, such as ImageNet's 1.28M, by names only: a start stays fast);
- anything else: the number of items and the labels.

``describe_change(old, new)`` says what differs in one phrase (``"120 -> 140 images"``).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

FULL_HASH_BYTES = 256 * 2**20
SAMPLED_ROWS = 65536
STAT_FILES = 200_000


def _labels(targets) -> bytes:
    return np.asarray(list(targets), dtype=np.int64).tobytes()


def fingerprint(dataset) -> dict:
    """The identity of ``dataset`` (see the module docstring); cheap next to one epoch."""
    h = hashlib.sha256()
    n = len(dataset)
    images = getattr(dataset, "images", None)
    samples = getattr(dataset, "samples", None)
    if isinstance(images, torch.Tensor):
        kind, rows = "pixels", images
        if images.numel() > FULL_HASH_BYTES:
            rows = images[torch.linspace(0, n - 1, SAMPLED_ROWS).long().unique()]
        h.update(str(tuple(images.shape)).encode())
        h.update(memoryview(rows.contiguous().numpy()).cast("B"))
    elif samples is not None:
        kind = "files"
        sizes = n <= STAT_FILES  # one stat per file: up to STAT_FILES files (ImageNet's 1.28M: names only)
        for path, _ in samples:
            parts = os.fsencode(path).split(os.sep.encode())[-2:]
            h.update(b"/".join(parts) + (f"\0{os.stat(path).st_size}" if sizes else "").encode() + b"\n")
    else:
        kind = "labels"
    h.update(_labels(getattr(dataset, "targets", [])))
    return {"n": int(n), "kind": kind, "digest": h.hexdigest()[:32]}


def describe_change(old: dict, new: dict) -> str | None:
    """None when ``old`` and ``new`` are the same data, else what changed, e.g. ``"120 -> 140 images"``."""
    if old.get("kind") == new.get("kind") and old.get("digest") == new.get("digest") and old.get("n") == new.get("n"):
        return None
    if old.get("n") != new.get("n"):
        return f"{old.get('n')} -> {new.get('n')} images"
    if old.get("kind") != new.get("kind"):
        return f"another kind of dataset ({old.get('kind')} -> {new.get('kind')}), {new.get('n')} images"
    return f"same number of images ({new.get('n')}) but different {'pixels or labels' if new['kind'] == 'pixels' else 'files'}"
