"""Flat state-dict namings: split a checkpoint's tensors into backbone + heads, and back.

Pure functions over ``dict[str, Tensor]``; no file I/O, no torch at import time (method files
import this module, and ``import e2mc.methods`` stays torch-free). A *kind* (:class:`FlatKind`)
names how a flat dict groups its keys after an optional ``module.`` (DDP) prefix. Two are
generic, defined here:

* ``"model"``    ``backbone.*`` and ``<head>.*`` for every head slot a registered method declares
                 (``methods.base.head_names()``: the SSLModel naming); other top-level modules
                 are dropped.
* ``"backbone"`` the whole dict is a backbone (torchvision / timm names).

The others belong to a method's official files and live in its method file, on the adapter
that reads them (``Adapter.kind``); :func:`flat_kinds` collects them from ``METHODS``.
"""

from __future__ import annotations

from e2mc.errors import CheckpointError
from e2mc.methods.base import METHODS, head_names


def is_tensor_dict(obj) -> bool:
    """True for a non-empty dict of str -> Tensor."""
    import torch

    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def sub(sd: dict, prefix: str) -> dict:
    """Entries of ``sd`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def without_module(sd: dict) -> dict:
    """``sd`` without its ``module.`` prefix when every key has one (a DDP-wrapped model)."""
    return sub(sd, "module.") if all(k.startswith("module.") for k in sd) else sd


class FlatKind:
    """One naming of a flat state dict. Subclasses set ``name``, ``method`` (whose heads the
    naming holds; ``None`` when it does not tell) and ``tops`` (top-level module names that mark
    the naming: a Lightning checkpoint's descent into its submodules stops at them)."""

    name = ""
    method: str | None = None
    tops: tuple[str, ...] = ()

    def score(self, sd: dict, tops: set) -> float:
        """How specifically ``sd`` (top-level names ``tops``) shows this naming: 0 = not at all.
        The highest score names a dict's kind (:func:`flat_kind`)."""
        raise NotImplementedError

    def split(self, sd: dict) -> tuple[dict, dict, list[str]]:
        """``(backbone, {head: state dict}, dropped keys)`` in e2mc naming."""
        raise NotImplementedError

    def join(self, backbone: dict, heads: dict) -> dict:
        """Inverse of :meth:`split`: one flat dict in this naming (without ``module.``)."""
        raise NotImplementedError


class ModelKind(FlatKind):
    """SSLModel's naming (and VICReg's ``model`` dict): ``backbone.*``, ``<head>.*``."""

    name, tops = "model", ("backbone",)

    def score(self, sd, tops):
        return 0.8 if "backbone" in tops else 0.0

    def split(self, sd):
        heads = head_names()
        dropped = [k for k in sd if k.split(".", 1)[0] not in ("backbone", *heads)]
        return sub(sd, "backbone."), {h: sub(sd, h + ".") for h in heads}, dropped

    def join(self, backbone, heads):
        out = {f"backbone.{k}": v for k, v in backbone.items()}
        for h in head_names():
            out.update({f"{h}.{k}": v for k, v in heads.get(h, {}).items()})
        return out


class BackboneKind(FlatKind):
    """A backbone alone: every key is the backbone's (the fallback of :func:`flat_kind`)."""

    name = "backbone"

    def score(self, sd, tops):
        return 0.1

    def split(self, sd):
        return dict(sd), {}, []

    def join(self, backbone, heads):
        return dict(backbone)


GENERIC_KINDS = (ModelKind(), BackboneKind())


def flat_kinds() -> dict[str, FlatKind]:
    """Every kind by name: the generic ones, then each registered method's adapters' kinds."""
    kinds = {k.name: k for k in GENERIC_KINDS}
    for method in METHODS.values():
        for adapter in method.adapters:
            kind = getattr(adapter, "kind", None)
            if kind is None:
                continue
            if type(kinds.setdefault(kind.name, kind)) is not type(kind):
                raise ValueError(f"flat kind name {kind.name!r} of {type(kind).__name__} is already taken")
    return kinds


def flat_kind(sd: dict) -> str:
    """Kind of a flat dict whose ``module.`` prefix was already removed."""
    tops = {k.split(".", 1)[0] for k in sd}
    scores = {name: kind.score(sd, tops) for name, kind in flat_kinds().items()}
    return max(scores, key=scores.get)


def split_flat(sd: dict, kind: str | None = None) -> tuple[dict, dict, list[str], dict]:
    """Split a flat dict into ``(backbone, heads, dropped_keys, layout)``.

    ``layout`` = ``{"kind", "module_prefix"}`` is what :func:`join_flat` needs to write it back.
    """
    module = all(k.startswith("module.") for k in sd)
    if module:
        sd = sub(sd, "module.")
    kind = kind or flat_kind(sd)
    kinds = flat_kinds()
    if kind not in kinds:
        raise CheckpointError(f"unknown flat layout kind {kind!r}; known: {', '.join(kinds)}")
    backbone, heads, dropped = kinds[kind].split(sd)
    heads = {h: d for h, d in heads.items() if d}
    return backbone, heads, dropped, {"kind": kind, "module_prefix": module}


def join_flat(backbone: dict, heads: dict, layout: dict) -> dict:
    """Inverse of :func:`split_flat`: a flat dict in ``layout["kind"]`` naming (``"model"`` when
    none is given; an unknown kind writes the backbone alone)."""
    kinds = flat_kinds()
    kind = kinds.get(layout.get("kind", "model"), kinds["backbone"])
    out = kind.join(backbone, heads)
    if layout.get("module_prefix"):
        out = {f"module.{k}": v for k, v in out.items()}
    return out
