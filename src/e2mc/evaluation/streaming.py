"""Streaming linear probe on cached features: memory independent of N, time linear in N.

The exact probe (:func:`e2mc.evaluation.linear.linear_probe` with L-BFGS) holds the logits of every
penalty for the whole training set. This module fits the same objective,
``mean CE(x W_h + b_h, y) + wd_h / 2 * ||W_h||^2`` on standardised features, by mini-batch SGD
(Nesterov momentum, cosine-decayed step size) with all penalties as parallel heads of ONE linear
layer ``(D, H * C)``, as in DINOv2's linear evaluation: one pass over each mini-batch trains every
head. Each head's step size is ``lr_scale / L_h`` with ``L_h = (lambda_max + 1) / 2 + wd_h`` the
smoothness constant of its objective (``lambda_max``: the largest eigenvalue of the standardised
features' second-moment matrix, estimated by power iteration on at most 4096 rows), so no
learning rate has to be tuned per dataset.

Selection and refit follow the exact probe: heads are trained on a seeded, stratified 90% of the
TRAINING split, the penalty with the best accuracy on the other 10% is refitted alone on the whole
training split, and the test set is scored once. Rows are read in mini-batches from ``train_x``
(any float dtype, e.g. a float16 memory-mapped array), standardised on the fly with mean/std
accumulated in float64 chunks; only ``batch_size`` rows, the ``(D, H * C)`` weights and their
momentum live in memory besides the features themselves.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import torch

from e2mc.errors import DataError

log = logging.getLogger(__name__)

CHUNK = 16384  # rows per block for statistics and scoring
PROGRESS_SECONDS = 60.0  # a progress line (INFO) at most this often during a long fit


def _take(x: torch.Tensor, idx: torch.Tensor | None, s: int, e: int) -> torch.Tensor:
    rows = x[s:e] if idx is None else x[idx[s:e].to(x.device)]
    return rows.float()


def feature_stats(x: torch.Tensor, idx: torch.Tensor | None = None, chunk: int = CHUNK):
    """Mean and unbiased std (clamped at 1e-6) over the rows ``idx`` (all rows if None), float32
    results from float64 sums over row blocks."""
    n = x.shape[0] if idx is None else idx.numel()
    s1 = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s1)
    for s in range(0, n, chunk):
        r = _take(x, idx, s, s + chunk).double()
        s1 += r.sum(0)
        s2 += (r * r).sum(0)
    mean = s1 / n
    var = ((s2 - n * mean * mean) / max(n - 1, 1)).clamp_min(0)
    return mean.float(), var.sqrt().float().clamp_min(1e-6)


def _lambda_max(x, idx, mean, std, seed: int, rows: int = 4096, iters: int = 30) -> float:
    """Largest eigenvalue of the standardised second-moment matrix, from a seeded row sample."""
    n = x.shape[0] if idx is None else idx.numel()
    g = torch.Generator().manual_seed(int(seed) + 1)
    pick = torch.randperm(n, generator=g)[: min(rows, n)].sort().values
    sample_idx = pick if idx is None else idx[pick]
    z = (x[sample_idx.to(x.device)].float() - mean) / std
    v = torch.randn(z.shape[1], generator=g).to(z.device)
    lam = 0.0
    for _ in range(iters):
        w = z.T @ (z @ v) / z.shape[0]
        lam = float(w.norm())
        v = w / max(lam, 1e-12)
    return lam


def fit_streaming(
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor | None,
    num_classes: int,
    weight_decays: Sequence[float],
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    epochs: int = 10,
    min_steps: int = 1000,
    batch_size: int = 1024,
    lr_scale: float = 1.0,
    momentum: float = 0.9,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Train H = len(weight_decays) softmax regressions at once on rows ``idx`` of ``x``.

    Runs ``max(epochs, ceil(min_steps / steps_per_epoch))`` epochs (small sets get at least
    ``min_steps`` steps; beyond ``min_steps * batch_size / epochs`` rows the time is linear in N).
    Returns ``W`` (H, D, C), ``b`` (H, C) on ``x``'s device and ``{"epochs", "steps",
    "batch_size", "lr": [per head], "lambda_max"}``.
    """
    dev = x.device
    n = x.shape[0] if idx is None else idx.numel()
    d, c, h = x.shape[1], num_classes, len(weight_decays)
    mean, std = mean.to(dev), std.to(dev)
    wd = torch.tensor([float(v) for v in weight_decays], device=dev)
    lam = _lambda_max(x, idx, mean, std, seed)
    lr = lr_scale / (0.5 * (lam + 1.0) + wd)  # per head: 1 / smoothness constant, scaled
    lr_cols, wd_cols = lr.repeat_interleave(c), wd.repeat_interleave(c)
    w = torch.zeros(d, h * c, device=dev)
    b = torch.zeros(h * c, device=dev)
    mw, mb = torch.zeros_like(w), torch.zeros_like(b)
    steps_per_epoch = math.ceil(n / batch_size)
    epochs = max(int(epochs), math.ceil(min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    g = torch.Generator().manual_seed(int(seed))
    y = y.to(dev)
    step = 0
    t0 = t_log = time.monotonic()
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        order = perm if idx is None else idx[perm]
        for s in range(0, n, batch_size):
            rows = order[s : s + batch_size].sort().values.to(dev)  # sorted: sequential reads of a memmap
            xb = (x[rows].float() - mean) / std
            p = torch.softmax((xb @ w + b).view(-1, h, c), dim=2)
            p[torch.arange(rows.numel(), device=dev), :, y[rows]] -= 1.0  # d mean CE / d logits
            p = p.view(-1, h * c) / rows.numel()
            gw = xb.T @ p + w * wd_cols
            gb = p.sum(0)
            scale = lr_cols * (0.5 * (1 + math.cos(math.pi * step / total)))
            mw.mul_(momentum).add_(gw)
            mb.mul_(momentum).add_(gb)
            w -= scale * (gw + momentum * mw)  # Nesterov
            b -= scale * (gb + momentum * mb)
            step += 1
            if time.monotonic() - t_log >= PROGRESS_SECONDS:
                t_log = time.monotonic()
                log.info(
                    "streaming linear probe: %d heads, epoch %d/%d, step %d/%d, %.0f s",
                    h,
                    ep + 1,
                    epochs,
                    step,
                    total,
                    t_log - t0,
                )
        if not bool(torch.isfinite(w).all()):
            raise DataError(
                "streaming linear probe diverged (non-finite weights); check the features for "
                "huge values or pass a smaller lr_scale (linear_probe(..., streaming={'lr_scale': 0.3}))"
            )
    info = {
        "epochs": epochs,
        "steps": step,
        "batch_size": int(batch_size),
        "lr": [float(v) for v in lr],
        "lambda_max": lam,
    }
    return w.view(d, h, c).permute(1, 0, 2).contiguous(), b.view(h, c), info


def batched_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits (N, H, C) of H linear classifiers from one matmul: x (N, D), w (H, D, C), b (H, C)."""
    h, d, c = w.shape
    return (x @ w.permute(1, 0, 2).reshape(d, h * c)).view(-1, h, c) + b


def accuracy_per_head(x, y, idx, w, b, mean, std, chunk: int = CHUNK, preds: list | None = None) -> torch.Tensor:
    """Accuracy (H,) of each head on rows ``idx`` of ``x`` (all rows if None), in row blocks;
    ``preds`` (a list) gets the first head's predicted labels, block by block."""
    dev = w.device
    n = x.shape[0] if idx is None else idx.numel()
    correct = torch.zeros(w.shape[0], device=dev)
    for s in range(0, n, chunk):
        xb = (_take(x, idx, s, s + chunk).to(dev) - mean.to(dev)) / std.to(dev)
        yb = y[s : s + chunk] if idx is None else y[idx[s : s + chunk]]
        pred = batched_logits(xb, w, b).argmax(dim=2)
        correct += (pred == yb.to(dev).view(-1, 1)).sum(0)
        if preds is not None:
            preds.append(pred[:, 0].cpu())
    return correct / n


def streaming_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes: int,
    weight_decays: Sequence[float],
    tr_idx: torch.Tensor,
    va_idx: torch.Tensor,
    **fit_kw,
) -> dict:
    """Selection on ``va_idx`` among heads trained on ``tr_idx``, refit of the chosen penalty on
    every training row, one test score. Returns the parts of ``linear_probe``'s result dict."""
    mean, std = feature_stats(train_x, tr_idx)
    w, b, info = fit_streaming(train_x, train_y, tr_idx, num_classes, weight_decays, mean=mean, std=std, **fit_kw)
    val_acc = accuracy_per_head(train_x, train_y, va_idx, w, b, mean, std).cpu()
    best = int(torch.argmax(val_acc))  # first maximum = smallest penalty among ties
    wd = float(weight_decays[best])
    mean, std = feature_stats(train_x)
    w1, b1, info1 = fit_streaming(train_x, train_y, None, num_classes, [wd], mean=mean, std=std, **fit_kw)
    preds: list = []
    top1 = float(accuracy_per_head(test_x, test_y, None, w1, b1, mean, std, preds=preds)[0])
    return {
        "top1": top1,
        "test_pred": torch.cat(preds),
        "best": best,
        "val_acc": val_acc,
        "info": info,
        "refit_info": info1,
    }
