"""What a checkpoint adapter is: :class:`Adapter` (detect, split, pack one published layout) and
:class:`Parts` (a checkpoint split into e2mc naming), plus the helpers adapters share.

It sits in the ``methods`` layer so that a method file declares the adapters of its official
files (``Method.adapters``); ``e2mc.models.adapters`` adds the generic ones (e2mc, Lightning,
torchvision, timm, state_dict) and builds the registry ``ADAPTERS``. Building the model and
checking keys/shapes is shared (``e2mc.models.checkpoints.model_from_parts``,
``e2mc.models.export.export_model``). No torch at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from e2mc.methods.layout import FlatKind, flat_kind, flat_kinds, is_tensor_dict, split_flat, without_module


@dataclass
class Parts:
    """A checkpoint split into e2mc naming, plus what it says about itself."""

    backbone: dict
    heads: dict
    method: str | None = None
    arch: str | None = None
    cifar_stem: bool | None = None
    head_sizes: dict | None = None
    epoch: int | None = None
    optimizer: Any = None
    dropped: list = field(default_factory=list)
    layout: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    taken: list = field(default_factory=list)  # a source's keys (its backbone's naming) that became heads
    method_state: Any = (
        None  # the method's own state the file holds (DINO's centre), as ``Method.save_state`` writes it
    )


def flat_parts(sd: dict, kind: str | None = None, **meta) -> Parts:
    """:class:`Parts` of a flat dict in ``kind`` naming (detected when ``None``); the method is the
    kind's own unless ``meta`` names one."""
    backbone, heads, dropped, layout = split_flat(sd, kind)
    meta.setdefault("method", flat_kinds()[layout["kind"]].method)
    return Parts(backbone, heads, dropped=dropped, layout=layout, **meta)


def inner_kind(sd) -> str | None:
    """Kind of a flat dict (``module.`` prefix or not); ``None`` when ``sd`` is not a dict of tensors."""
    return flat_kind(without_module(sd)) if is_tensor_dict(sd) else None


def epoch_of(obj) -> int | None:
    """A checkpoint dict's ``"epoch"`` as an int (``None`` when absent or not a number)."""
    e = obj.get("epoch") if isinstance(obj, dict) else None
    return int(e) if isinstance(e, (int, float)) and not isinstance(e, bool) else None


class Adapter:
    """Base adapter. Subclasses set ``name`` (the ``--format``/``export --to`` name), ``expected``
    (top-level keys), ``description`` and, when its files use a naming of their own, ``kind``;
    ``names_arch`` when its files name any timm network they hold (``split`` reads it back), so a
    ViT whose weights do not tell its shape loads without ``--arch``."""

    name = ""
    expected: tuple = ()
    description = ""
    kind: FlatKind | None = None
    names_arch = False
    holds_audio = False  # export may write an audio encoder in this layout (a transformers folder, e2mc's)

    def detect(self, obj) -> float:
        """Confidence in [0, 1] that ``obj`` is in this layout (>= 0.5 means recognised)."""
        raise NotImplementedError

    def split(self, obj) -> Parts:
        """Backbone/heads in e2mc naming; raises CheckpointError when ``obj`` does not fit."""
        raise NotImplementedError

    def pack(self, backbone: dict, heads: dict, meta: dict) -> dict:
        """The checkpoint object for a model's ``backbone``/``heads`` state dicts.

        ``meta``: ``method, arch, cifar_stem, head_sizes, epoch, optimizer, layout`` (the layout
        the model was loaded from, when the same format).
        """
        raise NotImplementedError

    def save(self, obj, path, error) -> Any:
        """Write ``pack``'s ``obj`` at ``path`` for a layout that is not one pickled file (a
        transformers ``save_pretrained`` folder), through ``e2mc.fileio`` with ``error`` (the
        refused-write message); returns the path written. Default: None (e2mc pickles ``obj``)."""
        return None

    def closeness(self, obj) -> float:
        """Overlap of ``obj``'s top-level keys with this layout's (for error messages)."""
        keys = set(obj) if isinstance(obj, dict) else set()
        want = set(self.expected)
        return len(keys & want) / max(1, len(keys | want))
