"""Criteria: pure loss math. Base criteria (one file per method: VICReg, SwAV, SimSiam,
Barlow Twins, BYOL, MoCo v3, DINO) and
add-ons (E2MC, VC, uniformity, MMCR, none), each a small ``nn.Module`` called with a list of
per-view tensors and returning a dict with a differentiable ``"loss"`` and detached terms.

A method's file (``e2mc.methods.<name>``) imports its base criterion's class and builds it
(``Method.build_criterion``); the add-ons, chosen by name (``addon.name``), have the registry
below, the one place that maps add-on names to classes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from e2mc.criteria.addons import MMCRAddon, NoAddon, UniformityAddon, VCAddon
from e2mc.criteria.barlowtwins import BarlowTwinsLoss
from e2mc.criteria.byol import BYOLLoss
from e2mc.criteria.dino import DINOLoss
from e2mc.criteria.e2mc import E2MC
from e2mc.criteria.entropy import TRANSFORMS, default_m, get_transform, m_spacing_entropy
from e2mc.criteria.mocov3 import MoCoV3Loss
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


def build_addon(name: str, **kwargs: Any) -> nn.Module:
    """Build the add-on called ``name`` (a key of ``ADDONS``) with constructor ``kwargs``.

    Raises:
        ConfigError: unknown name (the message lists the valid ones) or bad keyword arguments.
    """
    cls = ADDONS.get(str(name).lower()) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown add-on {name!r}; use one of {sorted(ADDONS)}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"bad arguments for add-on {name!r} ({cls.__name__}): {exc}; "
            f"see help(e2mc.criteria.{cls.__name__}) for its parameters"
        ) from None


__all__ = [
    "ADDONS",
    "BarlowTwinsLoss",
    "BYOLLoss",
    "DINOLoss",
    "E2MC",
    "MMCRAddon",
    "MoCoV3Loss",
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
    "default_m",
    "get_transform",
    "m_spacing_entropy",
    "sinkhorn_knopp",
]
