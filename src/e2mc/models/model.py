"""SSLModel: a backbone plus the heads of one self-supervised method."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from e2mc.errors import CriterionInputError


class SSLModel(nn.Module):
    """Backbone + optional projector / predictor / prototypes.

    Attributes ``backbone``, ``projector``, ``predictor``, ``prototypes`` (``None`` when absent),
    plus ``method``, ``arch``, ``cifar_stem``, ``head_sizes`` so that a checkpoint can rebuild
    the model (:meth:`build`).

    ``forward(views)`` batches consecutive views of the same shape through the backbone and the
    heads in one concatenated batch (BN statistics over all those crops, as the official SwAV
    multi-crop code). The official VICReg/SimSiam code runs each view separately; pass
    ``concat_views=False`` for that behaviour.

    Example:
        >>> m = SSLModel.build("simsiam", "resnet_mini:8-8-16")
        >>> out = m([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
        >>> out["z"][0].shape, out["p"][1].shape
        (torch.Size([4, 64]), torch.Size([4, 64]))
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module | None = None,
        predictor: nn.Module | None = None,
        prototypes: nn.Linear | None = None,
        method: str | None = None,
        *,
        arch: str | None = None,
        cifar_stem: bool = False,
        head_sizes: dict | None = None,
        concat_views: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor
        self.prototypes = prototypes
        self.method = method
        self.arch = arch
        self.cifar_stem = bool(cifar_stem)
        self.head_sizes = dict(head_sizes or {})
        self.concat_views = concat_views

    @classmethod
    def build(
        cls, method: str | None, arch: str, cifar_stem: bool = False, pretrained: bool = False, **head_sizes
    ) -> "SSLModel":
        """Build a fresh model: ``build_backbone(arch)`` + ``build_heads(method, out_dim, **head_sizes)``."""
        from e2mc.models.backbones import build_backbone
        from e2mc.models.heads import build_heads, resolve_head_sizes

        backbone = build_backbone(arch, cifar_stem=cifar_stem, pretrained=pretrained)
        sizes = resolve_head_sizes(method, backbone.out_dim, **head_sizes) if method else {}
        heads = build_heads(method, backbone.out_dim, **sizes)
        return cls(backbone, **heads, method=method, arch=arch, cifar_stem=cifar_stem, head_sizes=sizes)

    @property
    def head_names(self) -> list[str]:
        """Names of the heads present, e.g. ``["projector", "prototypes"]``."""
        return [n for n in ("projector", "predictor", "prototypes") if getattr(self, n) is not None]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, out_dim) of images (N, 3, H, W)."""
        return self.backbone(x)

    def _groups(self, views: list[torch.Tensor]) -> list[list[int]]:
        groups: list[list[int]] = []
        for i, v in enumerate(views):
            if self.concat_views and groups and views[groups[-1][-1]].shape[1:] == v.shape[1:]:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def forward(self, views: list[torch.Tensor] | torch.Tensor) -> dict:
        """Per-view lists ``features``, ``z`` (projector, pre-normalisation), ``p``, ``scores``.

        Keys for absent heads are missing from the dict.
        """
        if isinstance(views, torch.Tensor):
            views = [views]
        if not views or any(v.dim() != 4 for v in views):
            raise CriterionInputError("SSLModel expects a non-empty list of (N, C, H, W) image tensors")
        out: dict[str, list[torch.Tensor]] = {"features": []}
        if self.projector is not None:
            out["z"] = []
        if self.predictor is not None:
            out["p"] = []
        if self.prototypes is not None:
            out["scores"] = []
        for group in self._groups(views):
            sizes = [views[i].shape[0] for i in group]
            feats = self.backbone(torch.cat([views[i] for i in group]) if len(group) > 1 else views[group[0]])
            out["features"] += list(feats.split(sizes))
            if self.projector is None:
                continue
            z = self.projector(feats)
            out["z"] += list(z.split(sizes))
            if self.predictor is not None:
                out["p"] += list(self.predictor(z).split(sizes))
            if self.prototypes is not None:
                out["scores"] += list(self.prototypes(F.normalize(z, dim=1)).split(sizes))
        return out
