"""MoCo v3 (Chen, Xie & He, ICCV 2021): InfoNCE of the online predictions against a momentum
encoder's keys (facebookresearch/moco-v3, commit c349e6e; ``moco/builder.py``, ``main_moco.py``).

Heads (official ``_build_mlp``, every Linear without bias): ``projector`` (``base_encoder.fc`` of a
ResNet, ``base_encoder.head`` of a ViT): ``proj_layers`` x [Linear, BN, ReLU] with the last
[Linear, BN(affine=False)]: 2 layers for ResNets, 3 for ViTs; ``predictor``: Linear, BN, ReLU,
Linear, plus BN(affine=False) for ViTs (``pred_last_bn``). Sizes ``proj_hidden = pred_hidden =
min(4096, 16 d)``, ``proj_dim = min(256, 4 d)`` (the official 4096 / 256 for every real backbone).
Head sizes do not see the arch, so the defaults are the ResNet layout; a file's layout is read from
its weights, and fresh ViT heads take ``model.head_sizes={proj_layers: 3, pred_last_bn: 1}``. The
temperature is ``method.moco_t``; 0 (default) is the official value of the model's arch, 1.0 for
ResNets and 0.2 (``--moco-t=.2``) for ViTs, set on the criterion at the loss (the criterion is built
before the model's arch is known).
The momentum encoder (``momentum_encoder`` slot: a frozen copy of ``backbone`` + ``projector``) moves
by ``k <- m k + (1 - m) q`` at the start of every step, before the keys are computed, as the
official ``forward`` does (``before_forward``); ``m`` follows the official cosine schedule from
``method.momentum`` (0.99) to 1 (``--moco-m-cos``; a continuation holds it at 1 unless
``method.continue_momentum`` is set). Each view goes through the networks alone (BatchNorm
statistics per view, as the official per-view calls).

E2MC (and every add-on) attaches to the online projector output ``z`` (before the predictor): the
embedding the momentum encoder averages and whose keys the predictions are matched to.

ViTs: the official ViT-S has 12 heads (timm's ``vit_small_patch16_224`` 6), so its arch is
``timm:vit_small_patch16_224:num_heads=12`` (the adapter reads the file's ``arch``); its fixed 2-D
sin-cos position embedding is loaded as it is. The official runs kept the position embedding and the
patch embedding frozen (``--stop-grad-conv1``); an e2mc continuation trains both, from those values.
"""

from __future__ import annotations

from e2mc.methods.base import Method, Option, register
from e2mc.methods.momentum import ema_update, momentum_at, momentum_options

SOURCES = ("backbone", "projector")  # what the momentum encoder copies (official base_encoder incl. fc/head)


def mocov3_mlp(layers: int, in_dim: int, hidden: int, out: int, last_bn: bool = True):
    """The official ``_build_mlp``: Linear (no bias) + BN + ReLU between layers, BN(affine=False) last."""
    from torch import nn

    mods: list = []
    for i in range(layers):
        d1, d2 = in_dim if i == 0 else hidden, out if i == layers - 1 else hidden
        mods.append(nn.Linear(d1, d2, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*mods)


@register
class MoCoV3(Method):
    name, heads, outputs = "mocov3", ("projector", "predictor"), ("z", "p", "k")
    teacher = {"momentum_encoder": SOURCES}
    concat_views = False  # the official code calls the encoders on each view alone
    layouts = ("mocov3",)  # checkpoint_XXXX.pth.tar / r-50-*.pth.tar / vit-*-300ep.pth.tar
    addon_input = "online projector output z (before the predictor)"
    # main_moco.py (commit c349e6e), BYOL's recipe: RandomResizedCrop(224, scale (crop_min=0.08, 1));
    # ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8; grayscale 0.2; blur sigma (.1, 2.) p=1.0 / 0.1;
    # solarisation p=0.0 / 0.2; flip (the released ResNet-50 runs used --crop-min=.2)
    view_recipe = dict(
        n_large=2,
        large_scale=(0.08, 1.0),
        jitter=(0.4, 0.4, 0.2, 0.1),
        blur_p=(1.0, 0.1),
        solarize_p=(0.0, 0.2),
        small_images=dict(blur_p=(0.0,)),
    )
    e2mc_defaults = (10.0, 1.0, "sigmoid")  # the paper has no MoCo v3 run: its VICReg values
    paper_eps = 1e-7  # no MoCo v3 script in the paper: its VICReg value
    options = {
        **momentum_options(0.99),
        "moco_t": Option(
            0.0, 0, help="softmax temperature (--moco-t); 0: the official value, 1.0 (ResNet) or 0.2 (ViT)"
        ),
    }

    def default_head_sizes(self, in_dim):
        d = int(in_dim)
        hidden = min(4096, 16 * d)
        return {"proj_hidden": hidden, "proj_dim": min(256, 4 * d), "proj_layers": 2, "pred_hidden": hidden,
                "pred_last_bn": 0}  # fmt: skip

    def build_heads(self, in_dim, sizes):
        dim = sizes["proj_dim"]
        return {
            "projector": mocov3_mlp(sizes["proj_layers"], in_dim, sizes["proj_hidden"], dim),
            "predictor": mocov3_mlp(2, dim, sizes["pred_hidden"], dim, last_bn=bool(sizes["pred_last_bn"])),
        }

    def head_sizes_from_weights(self, heads):
        proj, pred, out = heads.get("projector", {}), heads.get("predictor", {}), {}
        linears = sorted(int(k.split(".")[0]) for k, v in proj.items() if k.endswith("weight") and v.dim() == 2)
        if linears:
            out.update(proj_layers=len(linears), proj_dim=int(proj[f"{linears[-1]}.weight"].shape[0]))
            if len(linears) > 1:
                out["proj_hidden"] = int(proj["0.weight"].shape[0])
        if "0.weight" in pred:
            out.update(pred_hidden=int(pred["0.weight"].shape[0]), proj_dim=int(pred["0.weight"].shape[1]))
            out["pred_last_bn"] = int("4.running_mean" in pred)
        return out

    def forward_heads(self, model, features, sizes, images):
        import torch

        z = model.projector(features)
        p = model.predictor(z)
        with torch.no_grad():  # the keys: the momentum encoder on the same images
            t = model.momentum_encoder
            k = t.projector(t.backbone(images))
        return {"z": list(z.split(sizes)), "p": list(p.split(sizes)), "k": list(k.split(sizes))}

    def build_criterion(self, cfg):
        from e2mc.criteria import build_criterion

        return build_criterion("mocov3", temperature=cfg.method.moco_t or 1.0)

    def base_loss(self, out, criterion, zs, ctx):
        t = ctx.cfg.method.moco_t if ctx.cfg is not None else criterion.temperature
        if not t:  # the official value by arch: --moco-t=.2 for the ViTs, 1.0 (default) otherwise
            vit = "vit" in str(getattr(ctx.model, "arch", "") or "")
            criterion.temperature = 0.2 if vit else 1.0
        return criterion(out["p"][:2], out["k"][:2])

    def before_forward(self, ctx):
        ema_update(ctx.model.momentum_encoder, ctx.model, SOURCES, momentum_at(ctx))
