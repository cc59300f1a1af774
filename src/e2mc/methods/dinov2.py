"""DINOv2's released backbones (facebookresearch/dinov2, commit b8931f7), continued with DINO's method.

Files: ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` = ``torch.save(model.state_dict())`` of
``dinov2/models/vision_transformer.py``'s ``DinoVisionTransformer`` (patch 14, 518 px: a 37 x 37
position grid, LayerScale ``ls1.gamma``/``ls2.gamma``; ViT-g: SwiGLU FFN ``mlp.w12``/``mlp.w3``;
``_reg4``: ``register_tokens`` (1, 4, D); every file: ``mask_token`` (1, D)). The heads were never
released: a continuation builds fresh DINO heads (``--method dino``) and warms them up.

:class:`DINOv2Adapter` (layout ``dinov2``) reads them into timm's ``vit_*_patch14[_reg4]_dinov2``
(the arch read from the weights: width and depth, registers, SwiGLU, grid): ``register_tokens`` ->
``reg_token``; with registers timm's model adds no position to the class token, so ``cls_token`` +
``pos_embed[:, 0]`` -> ``cls_token`` and ``pos_embed[:, 1:]`` -> ``pos_embed`` (the same sums the
official forward makes); ``mlp.w12``/``mlp.w3`` -> ``mlp.fc1``/``mlp.fc2`` (timm's ``SwiGLUPacked``
chunks ``fc1`` as the official ``silu(x1) * x2``). ``mask_token`` is iBOT's masked-patch token,
used only by training with masks, never by the forward: it is reported as not loaded. Written back
(``export --to dinov2``) in the official key order, ``pos_embed[:, 0]`` zero when the class
token holds it (the same model) and ``mask_token`` zero (the official initial value).

Position embeddings: the official ``interpolate_pos_encoding`` resamples the stored grid for every
input size with bicubic ``scale_factor = (new + 0.1) / 37`` and no antialiasing (the hub's models
without registers), or bicubic to the size with antialiasing (``_reg`` models:
``interpolate_offset=0.0``, ``interpolate_antialias=True``). ``TIMM_OPTIONS`` sets e2mc's
``pos_offset``/``pos_antialias`` for these timm names (``e2mc.models.posembed``), so loading a
release or ``timm:vit_small_patch14_dinov2.lvd142m`` gives the official tokens at 224 px, 96 px or
32 px alike. ``patch_resize``: sides that are not multiples of 14 (DINO's 96 px local crops, 32 px
images) are resized to the nearest multiples (98 px: DINOv2's own local crops; 28 px), where the
official ``PatchEmbed`` would refuse them.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from e2mc.errors import CheckpointError
from e2mc.methods.adapter import Adapter, Parts
from e2mc.methods.layout import is_tensor_dict
from e2mc.methods.release import Release

TIMM_OPTIONS = {
    "vit_*_patch14_dinov2": {"pos_offset": 0.1, "pos_antialias": False, "patch_resize": True},  # offset 0.1
    "vit_*_patch14_reg4_dinov2": {"pos_offset": 0.0, "pos_antialias": True, "patch_resize": True},  # _reg
}
_SIZES = {(384, 12): "small", (768, 12): "base", (1024, 24): "large", (1536, 40): "giant"}
_MARKERS = ("mask_token", "register_tokens", "blocks.0.mlp.w12.weight")  # official only (timm names differ)


def arch_of(sd: dict) -> str:
    """The timm arch of an official DINOv2 state dict: ``timm:vit_<size>_patch14[_reg4]_dinov2``,
    with constructor options for what the name does not fix (a width/depth of no release, another
    grid, register count or FFN width)."""
    try:
        dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        tokens = sd["pos_embed"].shape[1] - 1
        registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
        swiglu = "blocks.0.mlp.w12.weight" in sd
        hidden = sd["blocks.0.mlp." + ("w12" if swiglu else "fc1") + ".weight"].shape[0]
    except (KeyError, ValueError, AttributeError):
        raise CheckpointError(
            "DINOv2 state dict without patch_embed.proj / blocks.<i> / pos_embed: not a *_pretrain.pth release"
        ) from None
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"DINOv2 pos_embed of {tokens} patch positions is not a square grid")
    size = _SIZES.get((dim, depth))
    opts = {}
    if size is None or (size == "giant") != swiglu:
        size = "giant" if swiglu else "small"
        opts.update(embed_dim=dim, depth=depth, num_heads=max(1, dim // 64))  # every release: 64 per head
    if patch != 14:
        opts["patch_size"] = patch
    if grid * patch != 518:
        opts["img_size"] = grid * patch
    ratio = hidden / dim
    if int(dim * ratio) != hidden:  # timm's width is int(dim * mlp_ratio)
        ratio = (hidden + 0.5) / dim
    if (swiglu and hidden != 8192) or (not swiglu and hidden != 4 * dim):
        opts["mlp_ratio"] = ratio
    if registers not in (0, 4):
        opts["reg_tokens"] = registers
    name = f"vit_{size}_patch14{'_reg4' if registers else ''}_dinov2"
    return "timm:" + name + (":" + ",".join(f"{k}={v}" for k, v in opts.items()) if opts else "")


def to_timm(sd: dict) -> dict:
    """Official keys -> timm's, in timm's order (``mask_token`` left out: see the module docstring)."""
    reg = sd.get("register_tokens")
    out = {"cls_token": sd["cls_token"] + sd["pos_embed"][:, :1] if reg is not None else sd["cls_token"]}
    if reg is not None:
        out["reg_token"] = reg
    out["pos_embed"] = sd["pos_embed"][:, 1:] if reg is not None else sd["pos_embed"]
    for k, v in sd.items():
        if k not in ("cls_token", "pos_embed", "register_tokens", "mask_token"):
            out[k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = v
    return out


def from_timm(sd: dict, swiglu: bool) -> OrderedDict:
    """timm keys -> the official release's, in its order (``mask_token`` zero)."""
    import torch

    sd = dict(sd)
    reg = sd.pop("reg_token", None)
    cls, pos = sd.pop("cls_token"), sd.pop("pos_embed")
    out = OrderedDict(cls_token=cls)
    out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1) if reg is not None else pos
    if reg is not None:
        out["register_tokens"] = reg
    out["mask_token"] = torch.zeros(1, cls.shape[-1], dtype=cls.dtype)
    for k, v in sd.items():
        if swiglu:
            k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        out[k] = v
    return out


class DINOv2Adapter(Adapter):
    """facebookresearch/dinov2's ``dinov2_vit*14[_reg4]_pretrain.pth`` (see the module docstring)."""

    name, expected = "dinov2", ("cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "blocks.0.ls1.gamma")
    description = "DINOv2 release state dict (cls_token, pos_embed, [register_tokens], mask_token, blocks.*.ls1.gamma)"

    def detect(self, obj):
        if not is_tensor_dict(obj) or "patch_embed.proj.weight" not in obj or "blocks.0.ls1.gamma" not in obj:
            return 0.0
        return 0.8 if any(k in obj for k in _MARKERS) else 0.0

    def split(self, obj):
        if not is_tensor_dict(obj) or "cls_token" not in obj or "pos_embed" not in obj:
            raise CheckpointError("not a DINOv2 release: a state dict with cls_token, pos_embed and blocks.* expected")
        parts = Parts(to_timm(obj), {}, arch=arch_of(obj), cifar_stem=False)
        parts.layout = {"kind": "dinov2", "swiglu": "blocks.0.mlp.w12.weight" in obj}
        if "mask_token" in obj:
            parts.dropped.append("mask_token")
            parts.notes.append(
                "mask_token not loaded: iBOT's masked-patch token, used only in DINOv2 training with masks, "
                "never by the forward (export --to dinov2 writes it as zeros, its official initial value)"
            )
        if "register_tokens" in obj:
            parts.notes.append("register_tokens -> reg_token; cls_token + pos_embed[:, 0] -> cls_token (timm's layout)")
        parts.notes.append("no DINOv2 heads were released: --method dino builds fresh heads (warm them up)")
        return parts

    def pack(self, backbone, heads, meta):
        if "blocks.0.ls1.gamma" not in backbone or "patch_embed.proj.weight" not in backbone:
            raise CheckpointError(
                f"the dinov2 layout holds DINOv2 vision transformers (LayerScale, blocks.*.ls1.gamma); "
                f"{meta.get('arch')} is not one, and the file would not load back as one: export --to dino "
                "(a DINO run's own layout), timm or safetensors"
            )
        layout = meta.get("layout") or {}
        swiglu = layout.get("swiglu", "giant" in str(meta.get("arch") or ""))
        return from_timm(backbone, bool(swiglu))


_FB = "https://dl.fbaipublicfiles.com/dinov2"
_ROWS = (  # README "Pretrained models": size, params, (k-NN, linear) without / with registers
    ("s", "small", "21M", ("79.0%", "81.1%"), ("79.1%", "80.9%")),
    ("b", "base", "86M", ("82.1%", "84.5%"), ("82.0%", "84.6%")),
    ("l", "large", "300M", ("83.5%", "86.3%"), ("83.8%", "86.7%")),
    ("g", "giant", "1100M", ("83.5%", "86.5%"), ("83.7%", "87.1%")),
)
RELEASES = tuple(
    Release(
        f"dino:dinov2-vit{s}14{reg.replace('_', '-')}",
        method="dino",
        arch=f"timm:vit_{size}_patch14{'_reg4' if reg else ''}_dinov2",
        layout="dinov2",
        heads=False,
        url=f"{_FB}/dinov2_vit{s}14/dinov2_vit{s}14{reg}_pretrain.pth",
        params=params,
        details=f"DINOv2 LVD-142M{', 4 registers' if reg else ''}; ImageNet k-NN {acc[0]}, linear {acc[1]}",
    )
    for s, size, params, plain, regs in _ROWS
    for reg, acc in (("", plain), ("_reg4", regs))
)
RELEASES_SOURCE = "facebookresearch/dinov2 README and dinov2/hub/backbones.py, commit b8931f7 (2025-08-14)"
