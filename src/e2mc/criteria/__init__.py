"""Criteria: pure loss math. Base criteria (VICReg, SwAV, SimSiam, DINO) and add-ons (E2MC, VC,
uniformity, MMCR, none), each a small ``nn.Module`` called with a list of per-view tensors and
returning a dict with a differentiable ``"loss"`` and detached terms.

The registries below are the one place that maps names to classes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from e2mc.criteria.addons import MMCRAddon, NoAddon, UniformityAddon, VCAddon
from e2mc.criteria.dino import DINOLoss
from e2mc.criteria.e2mc import E2MC
from e2mc.criteria.entropy import TRANSFORMS, default_m, get_transform, m_spacing_entropy
from e2mc.criteria.simsiam import SimSiamLoss
from e2mc.criteria.swav import SwAVLoss, SwAVQueue, sinkhorn_knopp
from e2mc.criteria.vicreg import VICRegLoss, covariance_term
from e2mc.errors import ConfigError

ADDONS: dict[str, type[nn.Module]] = {
    "e2mc": E2MC,
    "vc": VCAddon,
    "uniformity": UniformityAddon,
    "mmcr": MMCRAddon,
    "none": NoAddon,
}

BASE_CRITERIA: dict[str, type[nn.Module]] = {
    "vicreg": VICRegLoss,
    "swav": SwAVLoss,
    "simsiam": SimSiamLoss,
    "dino": DINOLoss,
}


def _build(registry: dict[str, type[nn.Module]], kind: str, name: str, kwargs: dict) -> nn.Module:
    cls = registry.get(str(name).lower()) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown {kind} {name!r}; use one of {sorted(registry)}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"bad arguments for {kind} {name!r} ({cls.__name__}): {exc}; "
            f"see help(e2mc.criteria.{cls.__name__}) for its parameters"
        ) from None


def build_addon(name: str, **kwargs: Any) -> nn.Module:
    """Build the add-on called ``name`` (a key of ``ADDONS``) with constructor ``kwargs``.

    Raises:
        ConfigError: unknown name (the message lists the valid ones) or bad keyword arguments.
    """
    return _build(ADDONS, "add-on", name, kwargs)


def build_criterion(name: str, **kwargs: Any) -> nn.Module:
    """Build the base criterion called ``name`` (a key of ``BASE_CRITERIA``)."""
    return _build(BASE_CRITERIA, "base criterion", name, kwargs)


__all__ = [
    "ADDONS",
    "BASE_CRITERIA",
    "DINOLoss",
    "E2MC",
    "MMCRAddon",
    "NoAddon",
    "SimSiamLoss",
    "SwAVLoss",
    "SwAVQueue",
    "TRANSFORMS",
    "UniformityAddon",
    "VCAddon",
    "VICRegLoss",
    "covariance_term",
    "build_addon",
    "build_criterion",
    "default_m",
    "get_transform",
    "m_spacing_entropy",
    "sinkhorn_knopp",
]
