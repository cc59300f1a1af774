"""Read a backbone's architecture and a method's head sizes from weights.

Pure functions over ``dict[str, Tensor]``; no file I/O. How a flat checkpoint dict splits into
backbone + heads (its kind) is :mod:`e2mc.methods.layout` (the generic kinds) and the method
files (their official files' kinds).
"""

from __future__ import annotations

import math
import re

from e2mc.errors import CheckpointError
from e2mc.methods import METHODS

CLASSIFIER_PREFIXES = ("fc.", "head.", "head_dist.", "classifier.", "heads.")
_RESNETS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_VIT_SIZES = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large"}


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
