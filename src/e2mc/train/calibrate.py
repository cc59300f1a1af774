"""``addon.cov_weight: auto``: E2MC's covariance weight from the start checkpoint's measured terms.

e2mc's choice (not the paper's): the paper's covariance weight (VICReg: 1) was tuned for its
ImageNet models; on other models the unweighted E2MC covariance term can be orders of magnitude
smaller than the base loss (CIFAR-10 VICReg ResNet-18, 2048-d projector: ~0.005 against a VICReg
loss of ~20), so the same weight does not bind. ``auto`` sets

    cov_weight = addon.cov_fraction * |base loss| / covariance

measured ONCE, before the first step of a new run, on ``CALIBRATION_BATCHES`` global batches of
the training data (seeded by ``train.seed``; the model in train mode without gradients, its
batch-norm statistics and the RNG streams restored afterwards), so that the weighted covariance
term starts as the stated fraction of the base loss. The value is logged, stored in every
checkpoint (``"auto_cov_weight"``) and reused on resume. The paper recipes keep the paper's numbers.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from e2mc.errors import ConfigError

CALIBRATION_BATCHES = 2


def auto_cov_weight(base_loss: float, covariance: float, fraction: float) -> float:
    """``fraction * |base_loss| / covariance``; ConfigError when the covariance term is zero."""
    if not covariance > 0:
        raise ConfigError(
            f"addon.cov_weight=auto: the start's E2MC covariance term is {covariance:g}, so no weight "
            "makes it a fraction of the base loss; give addon.cov_weight a number"
        )
    return float(fraction) * abs(float(base_loss)) / float(covariance)


def calibration_indices(n: int, batch: int, seed: int, batches: int = CALIBRATION_BATCHES) -> list[list[int]]:
    """The dataset rows of each calibration batch: a permutation seeded by ``seed``, cut in batches."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    k = max(1, min(batches, n // batch))
    return [perm[i * batch : (i + 1) * batch] for i in range(k)]


@torch.no_grad()
def measure_terms(
    step: Callable[[Any, Any], dict], model: torch.nn.Module, data: Any, batch: int, cfg: Any, device: torch.device
) -> tuple[float, float]:
    """(mean base loss, mean unweighted E2MC covariance) of ``model`` on the calibration batches.

    ``step(images, addon) -> loss terms``: the trainer's step loss (``Trainer.forward_loss``: views,
    layout, autocast, ``model``, the method's loss) with the probe add-on; ``data``: the training
    dataset as the loader reads it; ``batch``: the per-process batch; ``cfg``: the run config.
    """
    from torch.utils.data import default_collate

    from e2mc.criteria import build_addon

    a = cfg.addon
    probe = build_addon("e2mc", transform=a.transform, entropy_weight=0.0, cov_weight=1.0, m=a.m, eps=a.eps)
    probe = probe.to(device)
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    was_training = model.training
    base, cov = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.train.seed)
        model.train()
        try:
            for rows in calibration_indices(len(data), batch, cfg.train.seed):
                terms = step(default_collate([data[i][0] for i in rows]), probe)
                base.append(float(terms["base"]))
                cov.append(float(terms["addon.covariance"]))
        finally:
            named = dict(model.named_buffers())
            for k, v in buffers.items():
                named[k].copy_(v)
            model.train(was_training)
    return sum(base) / len(base), sum(cov) / len(cov)
