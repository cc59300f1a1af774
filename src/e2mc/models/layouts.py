"""Flat state-dict layouts: split a checkpoint's tensors into backbone + heads, and back.

Pure functions over ``dict[str, Tensor]``; no file I/O. A *kind* names how a flat dict groups
its keys (after an optional ``module.`` DDP prefix):

* ``"model"``    ``backbone.*``, ``projector.*``, ``predictor.*``, ``prototypes.*`` (SSLModel,
                 VICReg's ``model`` dict); other top-level modules are dropped.
* ``"swav"``     trunk at the root, ``projection_head.*``, ``prototypes.*``.
* ``"simsiam"``  ``encoder.*`` trunk, ``encoder.fc.*`` projector, ``predictor.*``.
* ``"backbone"`` the whole dict is a backbone (torchvision / timm names).

It also detects the backbone architecture and head sizes from the weights.
"""

from __future__ import annotations

import math
import re

import torch

from e2mc.errors import CheckpointError
from e2mc.methods import METHODS

# every head and teacher slot a registered method declares (SSLModel state-dict prefixes)
HEADS = tuple(dict.fromkeys(h for m in METHODS.values() for h in (*m.heads, *m.teacher)))
CLASSIFIER_PREFIXES = ("fc.", "head.", "head_dist.", "classifier.", "heads.")
_RESNETS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_VIT_SIZES = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large"}


def is_tensor_dict(obj) -> bool:
    """True for a non-empty dict of str -> Tensor."""
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def sub(sd: dict, prefix: str) -> dict:
    """Entries of ``sd`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def flat_kind(sd: dict) -> str:
    """Kind of a flat dict whose ``module.`` prefix was already removed."""
    tops = {k.split(".", 1)[0] for k in sd}
    if "encoder" in tops and ("predictor" in tops or any(k.startswith("encoder.fc.") for k in sd)):
        return "simsiam"
    if "backbone" in tops:
        return "model"
    if "projection_head" in tops or "prototypes" in tops:
        return "swav"
    return "backbone"


def split_flat(sd: dict, kind: str | None = None) -> tuple[dict, dict, list[str], dict]:
    """Split a flat dict into ``(backbone, heads, dropped_keys, layout)``.

    ``layout`` = ``{"kind", "module_prefix"}`` is what :func:`join_flat` needs to write it back.
    """
    module = all(k.startswith("module.") for k in sd)
    if module:
        sd = sub(sd, "module.")
    kind = kind or flat_kind(sd)
    heads: dict[str, dict] = {}
    dropped: list[str] = []
    if kind == "simsiam":
        enc = sub(sd, "encoder.")
        backbone = {k: v for k, v in enc.items() if not k.startswith("fc.")}
        heads["projector"], heads["predictor"] = sub(enc, "fc."), sub(sd, "predictor.")
        dropped = [k for k in sd if not k.startswith(("encoder.", "predictor."))]
    elif kind == "swav":
        heads["projector"], heads["prototypes"] = sub(sd, "projection_head."), sub(sd, "prototypes.")
        backbone = {k: v for k, v in sd.items() if not k.startswith(("projection_head.", "prototypes."))}
    elif kind == "model":
        backbone = sub(sd, "backbone.")
        heads = {h: sub(sd, h + ".") for h in HEADS}
        dropped = [k for k in sd if k.split(".", 1)[0] not in ("backbone",) + HEADS]
    elif kind == "backbone":
        backbone = dict(sd)
    else:
        raise CheckpointError(f"unknown flat layout kind {kind!r}")
    heads = {h: d for h, d in heads.items() if d}
    return backbone, heads, dropped, {"kind": kind, "module_prefix": module}


def join_flat(backbone: dict, heads: dict, layout: dict) -> dict:
    """Inverse of :func:`split_flat`: a flat dict in ``layout["kind"]`` naming."""
    kind = layout.get("kind", "model")
    out: dict = {}
    if kind == "simsiam":
        out.update({f"encoder.{k}": v for k, v in backbone.items()})
        out.update({f"encoder.fc.{k}": v for k, v in heads.get("projector", {}).items()})
        out.update({f"predictor.{k}": v for k, v in heads.get("predictor", {}).items()})
    elif kind == "swav":
        out.update(backbone)
        out.update({f"projection_head.{k}": v for k, v in heads.get("projector", {}).items()})
        out.update({f"prototypes.{k}": v for k, v in heads.get("prototypes", {}).items()})
    elif kind == "model":
        out.update({f"backbone.{k}": v for k, v in backbone.items()})
        for h in HEADS:
            out.update({f"{h}.{k}": v for k, v in heads.get(h, {}).items()})
    else:
        out.update(backbone)
    if layout.get("module_prefix"):
        out = {f"module.{k}": v for k, v in out.items()}
    return out


def _resnet_arch(sd: dict) -> tuple[str, bool]:
    stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"layer(\d+)\.", k))})
    counts = tuple(1 + max(int(k.split(".")[1]) for k in sd if k.startswith(f"layer{i}.")) for i in stages)
    bottleneck = "layer1.0.conv3.weight" in sd
    cifar = sd["conv1.weight"].shape[-1] == 3
    width = sd["layer1.0.conv1.weight"].shape[0]
    if len(stages) == 4 and sd["conv1.weight"].shape[0] == 64:
        name = _RESNETS.get((bottleneck, counts))
        if name and bottleneck and width == 128 and name in ("resnet50", "resnet101"):
            name = "wide_" + name + "_2"
        if name and (width == 64 or name.startswith("wide_")):
            return name, cifar
    if not bottleneck and all(c == 1 for c in counts):
        widths = [sd[f"layer{i}.0.conv1.weight"].shape[0] for i in stages]
        return "resnet_mini:" + "-".join(str(w) for w in widths), True
    raise CheckpointError(
        f"ResNet weights with {'bottleneck' if bottleneck else 'basic'} blocks {counts} and width {width} "
        "match no known arch; pass arch= (--arch) explicitly"
    )


def detect_arch(sd: dict) -> tuple[str | None, bool | None]:
    """``(arch, cifar_stem)`` read from backbone weights, or ``(None, None)`` if not recognised.

    ResNets: depth from the block counts per stage and bottleneck vs basic blocks, wide variants
    from the bottleneck width, CIFAR stem from a 3x3 ``conv1``. timm ViTs: size from embed dim and
    depth, patch size from the patch embedding, image size from the position embedding.
    """
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        return _resnet_arch(sd)
    if "patch_embed.proj.weight" in sd and "blocks.0.attn.qkv.weight" in sd:
        dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        size = _VIT_SIZES.get((dim, depth))
        tokens = sd["pos_embed"].shape[1] - (1 if "cls_token" in sd else 0) if "pos_embed" in sd else 0
        img = int(math.isqrt(tokens)) * patch if tokens else 224
        name = f"vit_{size}_patch{patch}_{img}"
        import timm

        if size and timm.is_model(name):
            return "timm:" + name, False
    return None, None


def infer_head_sizes(method: str, heads: dict) -> dict:
    """Head sizes (as :func:`e2mc.models.heads.build_heads` takes them) read from head weights
    (``Method.head_sizes_from_weights``); ``{}`` for an unknown method."""
    spec = METHODS.get(method)
    return spec.head_sizes_from_weights(heads) if spec is not None else {}
