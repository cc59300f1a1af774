"""Label-free metrics per epoch on a fixed probe subset (no labels, no augmentation).

The probe is a fixed set of indices drawn once from the run's seed; images go through the eval
transform only. Metrics come from ``e2mc.metrics``: RankMe of backbone features and of
projector outputs, the E2MC marginal entropy of the mapped projector outputs, and uniformity of
the (L2-normalised) projector outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from e2mc.metrics import marginal_entropy, rankme, uniformity
from e2mc.models.model import head_embedding  # noqa: F401 - the monitor's embedding (also imported from here)


def probe_indices(n: int, size: int, seed: int) -> list[int]:
    """``min(size, n)`` distinct indices in ``[0, n)``, fixed by ``seed`` (sorted)."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    return sorted(torch.randperm(n, generator=g)[: min(size, n)].tolist())


class ProbeMonitor:
    """Computes label-free metrics of a model on a fixed probe subset.

    Args:
        dataset: items ``(uint8 (3, H, W), label)``.
        indices: probe indices (see ``probe_indices``).
        transform_fn: ``(uint8 batch on device) -> float batch`` (the eval transform).
        device: where to run the model.
        entropy_transform: box transform for the marginal entropy ("sigmoid" / "gaussian_cdf").
        batch_size: forward batch size.
    """

    def __init__(
        self,
        dataset,
        indices: list[int],
        transform_fn,
        device: torch.device,
        entropy_transform: str = "sigmoid",
        batch_size: int = 256,
    ) -> None:
        self.images = torch.stack([dataset[i][0] for i in indices]) if indices else None
        self.transform_fn = transform_fn
        self.device = device
        self.entropy_transform = entropy_transform
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(
        self, model: nn.Module, autocast_dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eval-mode backbone features and head embeddings (``head_embedding``) of the probe images
        (float, on the CPU; ``None`` without one); restores the model's train/eval mode."""
        was_training = model.training
        model.eval()
        feats, zs = [], []
        try:
            for chunk in self.images.split(self.batch_size):
                x = self.transform_fn(chunk.to(self.device, non_blocking=True))
                with torch.autocast(
                    self.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
                ):
                    f = model.backbone(x)
                    z = head_embedding(model, f)
                feats.append(f.float().cpu())
                if z is not None:
                    zs.append(z.float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(feats), (torch.cat(zs) if zs else None)

    @torch.no_grad()
    def __call__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
        """Metrics of ``model`` (an ``SSLModel``, not DDP-wrapped); restores its train/eval mode."""
        if self.images is None or self.images.shape[0] < 2:
            return {}
        f, z = self.embed(model, autocast_dtype)
        out = {"rankme": _safe(rankme, f)}
        if z is not None:
            out["rankme_proj"] = _safe(rankme, z)
            out["entropy"] = _safe(marginal_entropy, z, self.entropy_transform)
            out["uniformity"] = _safe(uniformity, z)
        return out


def _safe(fn, *args) -> float:
    """A metric that fails (collapsed or non-finite embeddings) is logged as NaN, not raised."""
    try:
        return float(fn(*args))
    except Exception:  # noqa: BLE001 - metrics are diagnostics; the loss check handles divergence
        return float("nan")
