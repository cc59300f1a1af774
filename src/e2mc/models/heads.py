"""Projection heads: built from the method's own declaration (``e2mc.methods.METHODS``).

Each method file declares its heads (names, layers with the exact module layout of the published
code, default sizes from the backbone width ``d``, sizes derived from others); this module is the
generic front door the model, the checkpoint loader and the layouts use.
"""

from __future__ import annotations

from e2mc.methods import METHODS, get_method
from e2mc.methods.base import head_names

# every head slot any registered method declares (SSLModel attributes, state-dict prefixes):
# its trainable heads, then its momentum teachers (``Method.teacher``)
HEAD_NAMES = head_names()
METHOD_HEADS = {name: m.heads for name, m in METHODS.items()}
TEACHER_SLOTS = {name: tuple(m.teacher) for name, m in METHODS.items()}


def default_head_sizes(method: str, in_dim: int) -> dict:
    """Default head sizes of ``method`` for a backbone with ``in_dim`` features."""
    return get_method(method).default_head_sizes(in_dim)


def resolve_head_sizes(method: str, in_dim: int, **sizes) -> dict:
    """Defaults of ``method`` updated with ``sizes``; unknown size names raise ConfigError."""
    return get_method(method).resolve_head_sizes(in_dim, **sizes)


def build_heads(method: str | None, in_dim: int, **sizes) -> dict:
    """Heads of ``method`` for a backbone with ``in_dim`` features.

    Returns ``{head: module}`` for every slot in ``HEAD_NAMES`` (``None`` where the method has no
    such head). ``method=None`` gives no heads; an unknown method raises ConfigError.

    Example:
        >>> h = build_heads(next(iter(METHODS)), 512)
        >>> sorted(k for k, v in h.items() if v is not None) == sorted(next(iter(METHODS.values())).heads)
        True
    """
    heads = dict.fromkeys(HEAD_NAMES)
    if method is None:
        return heads
    spec = get_method(method)
    heads.update(spec.build_heads(in_dim, spec.resolve_head_sizes(in_dim, **sizes)))
    return heads
