"""Models: backbones, heads, SSLModel, checkpoint adapters (load any published layout), export."""

from e2mc.models.backbones import build_backbone
from e2mc.models.heads import build_heads
from e2mc.models.model import SSLModel

__all__ = [
    "build_backbone",
    "build_heads",
    "SSLModel",
    "load_model",
    "LoadReport",
    "export_model",
    "save_backbone_safetensors",
    "ADAPTERS",
]

_LAZY = {
    "load_model": "e2mc.models.checkpoints",
    "LoadReport": "e2mc.models.checkpoints",
    "export_model": "e2mc.models.export",
    "save_backbone_safetensors": "e2mc.models.export",
    "ADAPTERS": "e2mc.models.adapters",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'e2mc.models' has no attribute {name!r}")
