"""facebookresearch/dinov2's release files (``dinov2_vits14_pretrain.pth`` ...), reproduced (no
official code copied).

A release is ``torch.save(model.state_dict())`` of ``dinov2/models/vision_transformer.py``'s
``DinoVisionTransformer`` built as ``dinov2/hub/backbones.py`` builds it (``block_chunks=0``,
LayerScale ``init_values=1.0``, patch 14): an ``OrderedDict`` of float32 tensors in the module's
order: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + M*M, D), ``register_tokens`` (1, R, D) when
R > 0, ``mask_token`` (1, D) (iBOT's masked-patch token, used in training only), ``patch_embed.proj``,
``blocks.<i>.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`` (ViT-g:
SwiGLU, ``mlp.w12`` (2H, D) and ``mlp.w3`` (D, H) with H = (int(4D * 2/3) + 7) // 8 * 8), ``norm``.

``python gen_dinov2.py OUT`` writes, with seeded values (``torch.manual_seed(0)`` per file), tiny
versions (D = 128, 2 heads of 64 as every release, depth 2, 70 px: a 5 x 5 grid):

* ``dinov2_vitt14_pretrain.pth`` (MLP, no registers; ViT-S/B/L's layout),
* ``dinov2_vitt14_reg4_pretrain.pth`` (4 registers),
* ``dinov2_vitg14t_pretrain.pth`` (SwiGLU FFN, ViT-g's layout).

Checked against the official code (facebookresearch/dinov2 b8931f7, ``git worktree`` at
/tmp/dinov2, xFormers absent: the code's own fallbacks, ``XFORMERS_DISABLED=1``):
``tests/official/check/dinov2_official.py /tmp/dinov2 OUT_GEN OUT_OFF`` builds each tiny
``DinoVisionTransformer`` with the hub's arguments (registers: ``interpolate_antialias=True``,
``interpolate_offset=0.0``, as ``dinov2_vits14_reg``; else ``False``, ``0.1``), loads the
generated file with ``strict=True``, saves its ``state_dict()`` as the hub's files are, and
writes its outputs (class token and normalised patch tokens, eval mode) on a fixed input at
70 px (native), 42 px and 56 x 42 px into ``dinov2_reference.pt``. Result (2026-12-05, torch
2.14.1 CPU): ``compare.py`` SAME for all three files (keys, order, shapes, dtypes, pickle globals
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``); the
reference is stored as tests/official/data/dinov2_reference.pt and
tests/official/test_official_dinov2.py checks e2mc's features against it. Written back: the
reg4 and SwiGLU files loaded by e2mc, their weights perturbed, ``export_model(..., format="dinov2")``
loaded into the official ``DinoVisionTransformer`` with ``strict=True``: outputs at 56 x 42 px equal
e2mc's (max difference 0.0; same date and commits).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import torch

DIM, DEPTH, GRID, PATCH = 128, 2, 5, 14
VARIANTS = {  # file -> (registers, swiglu)
    "dinov2_vitt14_pretrain.pth": (0, False),
    "dinov2_vitt14_reg4_pretrain.pth": (4, False),
    "dinov2_vitg14t_pretrain.pth": (0, True),
}


def swiglu_hidden(dim: int) -> int:
    """SwiGLUFFNFused's hidden width for mlp_ratio 4."""
    return (int(4 * dim * 2 / 3) + 7) // 8 * 8


def state_dict(registers: int, swiglu: bool, seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.02, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    d = DIM
    sd = OrderedDict()
    sd["cls_token"] = rnd(1, 1, d, std=0.5)
    sd["pos_embed"] = rnd(1, 1 + GRID * GRID, d, std=0.5)
    if registers:
        sd["register_tokens"] = rnd(1, registers, d, std=0.5)
    sd["mask_token"] = rnd(1, d, std=0.5)
    sd["patch_embed.proj.weight"] = rnd(d, 3, PATCH, PATCH, std=0.05)
    sd["patch_embed.proj.bias"] = rnd(d)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = rnd(d, std=0.1, mean=1.0), rnd(d)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = rnd(3 * d, d, std=0.1), rnd(3 * d)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = rnd(d, d, std=0.1), rnd(d)
        sd[b + "ls1.gamma"] = rnd(d, std=0.2, mean=0.5)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = rnd(d, std=0.1, mean=1.0), rnd(d)
        if swiglu:
            h = swiglu_hidden(d)
            sd[b + "mlp.w12.weight"], sd[b + "mlp.w12.bias"] = rnd(2 * h, d, std=0.1), rnd(2 * h)
            sd[b + "mlp.w3.weight"], sd[b + "mlp.w3.bias"] = rnd(d, h, std=0.1), rnd(d)
        else:
            sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = rnd(4 * d, d, std=0.1), rnd(4 * d)
            sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = rnd(d, 4 * d, std=0.05), rnd(d)
        sd[b + "ls2.gamma"] = rnd(d, std=0.2, mean=0.5)
    sd["norm.weight"], sd["norm.bias"] = rnd(d, std=0.1, mean=1.0), rnd(d)
    return sd


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (registers, swiglu) in VARIANTS.items():
        torch.save(state_dict(registers, swiglu), out / name)


if __name__ == "__main__":
    generate(Path(sys.argv[1]))
