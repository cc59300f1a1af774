"""e2mc: continued pre-training of self-supervised encoders with E2MC.

The public API is importable from the top-level package; submodules load lazily so that
``import e2mc`` stays cheap (the CLI's start-up time matters).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # criteria
    "m_spacing_entropy": "e2mc.criteria.entropy",
    "get_transform": "e2mc.criteria.entropy",
    "TRANSFORMS": "e2mc.criteria.entropy",
    "E2MC": "e2mc.criteria.e2mc",
    "VICRegLoss": "e2mc.criteria.vicreg",
    "SwAVLoss": "e2mc.criteria.swav",
    "SimSiamLoss": "e2mc.criteria.simsiam",
    "BarlowTwinsLoss": "e2mc.criteria.barlowtwins",
    "VCAddon": "e2mc.criteria.addons",
    "UniformityAddon": "e2mc.criteria.addons",
    "MMCRAddon": "e2mc.criteria.addons",
    "NoAddon": "e2mc.criteria.addons",
    "build_addon": "e2mc.criteria",
    "gather_with_grad": "e2mc.distributed",
    # models
    "build_backbone": "e2mc.models.backbones",
    "SSLModel": "e2mc.models.model",
    "load_model": "e2mc.models.checkpoints",
    "LoadReport": "e2mc.models.checkpoints",
    "export_model": "e2mc.models.export",
    # data
    "build_dataset": "e2mc.data.datasets",
    # training
    "RunConfig": "e2mc.config",
    "load_config": "e2mc.config",
    "pretrain": "e2mc.train.api",
    "continue_training": "e2mc.train.api",
    # evaluation
    "rankme": "e2mc.metrics",
    "evaluate": "e2mc.evaluation.api",
    "compare": "e2mc.evaluation.compare",
    "EvalSettings": "e2mc.evaluation.settings",
    # tuning
    "tune": "e2mc.tuning.api",
    "TuneSpec": "e2mc.tuning.api",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'e2mc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
