"""Load gen_dinov2.py's files into facebookresearch/dinov2's own ViT, save them as the hub's files
are, and record the official outputs.

Usage: ``XFORMERS_DISABLED=1 dinov2_official.py REPO GEN_OUT OFF_OUT`` (REPO: a checkout of
facebookresearch/dinov2; GEN_OUT: ``gen_dinov2.py``'s folder). For each generated file the script
builds ``dinov2.models.vision_transformer.DinoVisionTransformer`` as ``dinov2/hub/backbones.py``'s
``_make_dinov2_model`` does (``block_chunks=0``, ``init_values=1.0``, ``Block`` with
``MemEffAttention``; registers with ``interpolate_antialias=True, interpolate_offset=0.0``, else
``False, 0.1``; ViT-g's ``ffn_layer="swiglufused"``) at tiny width (D 128, 2 heads, depth 2,
``img_size=70``), ``load_state_dict(torch.load(file), strict=True)``, writes
``OFF_OUT/<file>`` = ``torch.save(model.state_dict())`` (compare with ``compare.py``), and puts
the eval-mode ``forward_features`` (``x_norm_clstoken``, ``x_norm_patchtokens``) of a fixed input
(``torch.manual_seed(1)``, ``randn(2, 3, 70, 70)``, cropped to 42 x 42 and 56 x 42) into
``OFF_OUT/dinov2_reference.pt``: ``{file: {"HxW": {"cls", "patch"}}}``.
"""

import sys
from functools import partial
from pathlib import Path

REPO, GEN, OUT = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, REPO)
import torch
from dinov2.layers import MemEffAttention
from dinov2.layers.block import Block
from dinov2.models.vision_transformer import DinoVisionTransformer

VARIANTS = {
    "dinov2_vitt14_pretrain.pth": dict(num_register_tokens=0, ffn_layer="mlp"),
    "dinov2_vitt14_reg4_pretrain.pth": dict(
        num_register_tokens=4, ffn_layer="mlp", interpolate_antialias=True, interpolate_offset=0.0
    ),
    "dinov2_vitg14t_pretrain.pth": dict(num_register_tokens=0, ffn_layer="swiglufused"),
}
SIZES = ((70, 70), (42, 42), (56, 42))

OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(1)
x = torch.randn(2, 3, 70, 70)
reference = {}
for name, kw in VARIANTS.items():
    kw = {"interpolate_antialias": False, "interpolate_offset": 0.1, **kw}
    model = DinoVisionTransformer(
        img_size=70,
        patch_size=14,
        embed_dim=128,
        depth=2,
        num_heads=2,
        mlp_ratio=4,
        init_values=1.0,
        block_chunks=0,
        block_fn=partial(Block, attn_class=MemEffAttention),
        **kw,
    )
    model.load_state_dict(torch.load(GEN / name, map_location="cpu"), strict=True)
    torch.save(model.state_dict(), OUT / name)
    model.eval()
    reference[name] = {}
    with torch.no_grad():
        for h, w in SIZES:
            out = model.forward_features(x[:, :, :h, :w])
            reference[name][f"{h}x{w}"] = {
                "cls": out["x_norm_clstoken"].clone(),
                "patch": out["x_norm_patchtokens"].clone(),
            }
            print(name, h, w, float(out["x_norm_clstoken"].abs().sum()))
torch.save(reference, OUT / "dinov2_reference.pt")
