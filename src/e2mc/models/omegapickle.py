"""Pickled omegaconf configs read as plain data, without omegaconf and without running anything.

fairseq's checkpoints of late 2020 to early 2021 (``checkpoint_utils.save_state`` between the
Hydra migration, facebookresearch/fairseq 3b27ed79, and f6d60e2f) store their ``cfg`` as the
omegaconf ``DictConfig`` object itself; its pickle names ``omegaconf.dictconfig.DictConfig``,
``omegaconf.listconfig.ListConfig``, ``omegaconf.nodes.AnyNode`` (and the typed nodes),
``omegaconf.base.Metadata`` / ``ContainerMetadata``, ``typing.Any``, ``collections.defaultdict``
(the metadata's resolver cache) and, at pickle protocol 2, ``__builtin__.long``.

:data:`GLOBALS` maps each of those names onto a data-only class of this module (a container,
a value node, a metadata record: ``__setstate__`` keeps the pickled ``__dict__`` and nothing
else), for ``torch.load(weights_only=True)``'s allow-list of one call; :func:`plain` then turns
the tree into dicts, lists and values (a container's ``_content``, a node's ``_val``; an
``argparse.Namespace`` value, which fairseq puts into legacy configs, into a dict). The
``_parent`` links are never followed. A global not in the table is refused by torch's unpickler.
"""

from __future__ import annotations

import argparse


class _Pickled:
    """An object rebuilt from a pickle as data: its pickled state, nothing else."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = state if isinstance(state, dict) else {"_content": state}


class Container(_Pickled):
    """Stands for ``DictConfig`` / ``ListConfig``: ``state["_content"]`` holds the items."""


class Node(_Pickled):
    """Stands for an omegaconf value node: ``state["_val"]`` holds the value."""


class Metadata(_Pickled):
    """Stands for omegaconf's ``Metadata`` / ``ContainerMetadata`` (types, flags): not kept."""


class _AnyType:
    """Stands for ``typing.Any`` (a node's declared type)."""

    def __repr__(self):
        return "typing.Any"


ANY = _AnyType()

NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode", "ValueNode")
GLOBALS: dict = {
    "omegaconf.dictconfig.DictConfig": Container,
    "omegaconf.listconfig.ListConfig": Container,
    "omegaconf.base.Metadata": Metadata,
    "omegaconf.base.ContainerMetadata": Metadata,
    "typing.Any": ANY,
    "__builtin__.long": int,
    **{f"omegaconf.nodes.{n}": Node for n in NODES},
}


def plain(obj):
    """``obj`` with every omegaconf stand-in and ``argparse.Namespace`` turned into plain data."""
    if isinstance(obj, Container):
        return plain(getattr(obj, "state", {}).get("_content"))
    if isinstance(obj, Node):
        return plain(getattr(obj, "state", {}).get("_val"))
    if isinstance(obj, argparse.Namespace):
        return {k: plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
