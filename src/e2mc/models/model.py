"""SSLModel: a backbone plus the heads of one self-supervised method."""

from __future__ import annotations

import torch
from torch import nn

from e2mc.errors import CriterionInputError
from e2mc.methods import METHODS
from e2mc.models.heads import HEAD_NAMES


class SSLModel(nn.Module):
    """Backbone + the heads its method declares (``e2mc.methods``), as submodules under the
    declared names (state-dict keys ``backbone.*``, ``<head>.*``); every other known head slot is
    ``None``. Also ``method``, ``arch``, ``cifar_stem``, ``head_sizes`` so that a checkpoint can
    rebuild the model (:meth:`build`).

    ``forward(views)`` batches consecutive views of the same shape through the backbone and the
    heads in one concatenated batch (BN statistics over all those crops, as the official
    multi-crop code), unless the method runs its views one by one (``Method.concat_views``); pass
    ``concat_views=False`` to run each view separately. The heads' outputs are the method's
    (``Method.forward_heads``). A method's momentum teacher (``Method.teacher``) is a frozen copy of
    the online modules in its own slot, made here when not given.

    Example:
        >>> name = next(iter(METHODS))
        >>> m = SSLModel.build(name, "resnet_mini:8-8-16")
        >>> out = m([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
        >>> out["z"][0].shape
        torch.Size([4, 64])
    """

    def __init__(
        self,
        backbone: nn.Module,
        method: str | None = None,
        *,
        arch: str | None = None,
        cifar_stem: bool = False,
        head_sizes: dict | None = None,
        concat_views: bool = True,
        **heads: nn.Module | None,
    ):
        super().__init__()
        unknown = set(heads) - set(HEAD_NAMES)
        if unknown:
            raise TypeError(f"SSLModel: unknown head(s) {sorted(unknown)}; known: {list(HEAD_NAMES)}")
        self.backbone = backbone
        for name in HEAD_NAMES:
            setattr(self, name, heads.get(name))
        self.method = method
        spec = METHODS.get(method) if method else None
        if spec is not None and all(getattr(self, h) is not None for h in spec.heads):
            spec.init_teacher(self, [t for t in spec.teacher if heads.get(t) is None])  # frozen copies
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
        return cls(backbone, method, **heads, arch=arch, cifar_stem=cifar_stem, head_sizes=sizes)

    @property
    def head_names(self) -> list[str]:
        """Names of the heads present, in the order of ``HEAD_NAMES``."""
        return [n for n in HEAD_NAMES if getattr(self, n) is not None]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, out_dim) of images (N, 3, H, W) (waveforms (N, samples) for an
        audio backbone: ``backbone.input_ndim == 2``)."""
        return self.backbone(x)

    def _groups(self, views: list[torch.Tensor], concat: bool) -> list[list[int]]:
        groups: list[list[int]] = []
        for i, v in enumerate(views):
            if concat and groups and views[groups[-1][-1]].shape[1:] == v.shape[1:]:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def forward(self, views: list[torch.Tensor] | torch.Tensor) -> dict:
        """Per-view lists: ``features`` (backbone) and the method's outputs (``Method.outputs``:
        e.g. ``z``, the projector output before any normalisation). Without its heads (a backbone
        alone, or ``method=None``) only ``features``."""
        if isinstance(views, torch.Tensor):
            views = [views]
        ndim = getattr(self.backbone, "input_ndim", 4)  # 2: an audio encoder's waveforms (N, samples)
        if not views or any(v.dim() != ndim for v in views):
            want = "(N, C, H, W) image" if ndim == 4 else "(N, samples) waveform"
            raise CriterionInputError(f"SSLModel expects a non-empty list of {want} tensors")
        spec = METHODS.get(self.method) if self.method else None
        if spec is not None and any(getattr(self, h) is None for h in spec.heads):
            spec = None
        out: dict[str, list[torch.Tensor]] = {"features": []}
        out.update((k, []) for k in (spec.outputs if spec is not None else ()))
        concat = self.concat_views and (spec is None or spec.concat_views)
        for group in self._groups(views, concat):
            sizes = [views[i].shape[0] for i in group]
            images = torch.cat([views[i] for i in group]) if len(group) > 1 else views[group[0]]
            feats = self.backbone(images)
            out["features"] += list(feats.split(sizes))
            self.group_start = group[0]  # the index of this group's first view (DINO's teacher: the global crops)
            if spec is not None:
                for k, v in spec.forward_heads(self, feats, sizes, images).items():
                    out[k] += v
        return out


def _embedding_module(model: nn.Module) -> nn.Module | None:
    """The module whose output is the head's embedding: the projector, else DINO's ``head.mlp``."""
    if getattr(model, "projector", None) is not None:
        return model.projector
    head = getattr(model, "head", None)
    return head.mlp if head is not None and hasattr(head, "mlp") else None


def head_embedding(model: nn.Module, f: torch.Tensor) -> torch.Tensor | None:
    """The head's embedding of backbone features ``f``: the projector's output, or a head's
    bottleneck (DINO's ``head.mlp``, before its L2 normalisation and prototypes); None when the
    model has neither. What the collapse guard, the monitor and evaluation's ``projector`` rows read."""
    m = _embedding_module(model)
    return None if m is None else m(f)


def has_head_embedding(model: nn.Module) -> bool:
    """Whether ``head_embedding`` gives an embedding for ``model``."""
    return _embedding_module(model) is not None
