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
ResNets and 0.2 (main_moco.py's moco-t=.2) for ViTs, set on the criterion at the loss (the criterion is built
before the model's arch is known).
The momentum encoder (``momentum_encoder`` slot: a frozen copy of ``backbone`` + ``projector``) moves
by ``k <- m k + (1 - m) q`` at the start of every step, before the keys are computed, as the
official ``forward`` does (``before_forward``); ``m`` follows the official cosine schedule from
``method.momentum`` (0.99) to 1 (main_moco.py's moco-m-cos; a continuation holds it at 1 unless
``method.continue_momentum`` is set). Each view goes through the networks alone (BatchNorm
statistics per view, as the official per-view calls).

E2MC (and every add-on) attaches to the online projector output ``z`` (before the predictor): the
embedding the momentum encoder averages and whose keys the predictions are matched to.

ViTs: the official ViT-S has 12 heads (timm's ``vit_small_patch16_224`` 6), so its arch is
``timm:vit_small_patch16_224:num_heads=12`` (the adapter reads the file's ``arch``); its fixed 2-D
sin-cos position embedding is loaded as it is. The official runs kept the position embedding and the
patch embedding frozen (main_moco.py's stop-grad-conv1); an e2mc continuation trains both, from those values.
"""

from __future__ import annotations

import json

from e2mc.errors import CheckpointError
from e2mc.methods.adapter import Adapter, Parts, epoch_of
from e2mc.methods.base import Method, Option, register
from e2mc.methods.layout import is_tensor_dict, sub
from e2mc.methods.momentum import ema_update, momentum_at, momentum_options
from e2mc.methods.release import Release

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


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_MOCO_ARCHS = {"vit_small": "timm:vit_small_patch16_224:num_heads=12", "vit_base": "timm:vit_base_patch16_224"}


def _n_params(sd: dict) -> int:
    """Parameters in a ResNet / ViT state dict (every entry but BatchNorm's buffers)."""
    return sum(1 for k in sd if not k.endswith(_BUFFERS))


class MoCoV3Adapter(Adapter):
    """facebookresearch/moco-v3 ``main_moco.py``'s checkpoint: the DDP state dict of ``MoCo_ResNet``
    / ``MoCo_ViT`` (``base_encoder`` with the projector in ``fc`` / ``head``, ``momentum_encoder`` the
    same, ``predictor``), its LARS / AdamW state over ``model.parameters()`` (one group; the momentum
    encoder's positions never hold state) and the GradScaler's. The momentum encoder's positions
    are taken out of the optimiser's group (e2mc's optimiser holds the trainable parameters only, in
    the same order) and put back by ``pack``."""

    name, expected = "mocov3", ("state_dict", "optimizer", "scaler", "epoch", "arch")
    description = (
        "MoCo v3 checkpoint {'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*', "
        "'module.predictor.*'}, 'optimizer', 'scaler', 'epoch', 'arch'}"
    )

    @staticmethod
    def _inner(obj):
        sd = obj.get("state_dict") if isinstance(obj, dict) else None
        if not is_tensor_dict(sd):
            return None, False
        module = all(k.startswith("module.") for k in sd)
        sd = sub(sd, "module.") if module else sd
        tops = {k.split(".", 1)[0] for k in sd}
        return (sd, module) if {"base_encoder", "momentum_encoder", "predictor"} <= tops else (None, False)

    def detect(self, obj):
        return 0.85 if self._inner(obj)[0] is not None else 0.0

    def split(self, obj):
        sd, module = self._inner(obj)
        if sd is None:
            raise CheckpointError(
                "not a MoCo v3 checkpoint: no 'state_dict' with 'module.base_encoder.*', "
                "'module.momentum_encoder.*' and 'module.predictor.*' keys"
            )
        base, mom = sub(sd, "base_encoder."), sub(sd, "momentum_encoder.")
        head = "fc." if any(k.startswith("fc.") for k in base) else "head."
        arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
        if arch and arch.startswith("vit_conv"):
            raise CheckpointError(
                f"{arch}: MoCo v3's convolutional-stem ViTs have no timm twin; use vit_small/vit_base"
            )
        teacher = {f"backbone.{k}": v for k, v in mom.items() if not k.startswith(head)}
        teacher.update({f"projector.{k}": v for k, v in sub(mom, head).items()})
        heads = {"projector": sub(base, head), "predictor": sub(sd, "predictor."), "momentum_encoder": teacher}
        layout = {"kind": "mocov3", "module_prefix": module, "head": head, "arch": arch}
        extra: dict = {}  # kept as one JSON string: a run keeps its source layout's plain values only
        optimizer = obj.get("optimizer")
        n_base = _n_params(base)
        if isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list):
            groups = [dict(g) for g in optimizer["param_groups"]]
            teacher_ids = set(range(n_base, 2 * n_base))  # model.parameters(): base, momentum, predictor
            at = [(gi, g["params"].index(n_base)) for gi, g in enumerate(groups) if n_base in g.get("params", [])]
            if at and not teacher_ids & set(optimizer.get("state", {})):
                gi, pos = at[0]
                groups[gi]["params"] = [i for i in groups[gi]["params"] if i not in teacher_ids]
                extra["teacher_params"] = [gi, pos, n_base, n_base]  # group, position, first id, count
            optimizer = {"state": optimizer.get("state", {}), "param_groups": groups}
            extra["param_groups"] = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        if isinstance(obj.get("scaler"), dict):
            extra["scaler"] = dict(obj["scaler"])
        layout["mocov3"] = json.dumps(extra, default=str)
        return Parts(
            {k: v for k, v in base.items() if not k.startswith(head)},
            heads,
            method="mocov3",
            arch=_MOCO_ARCHS.get(arch, arch),
            epoch=epoch_of(obj),
            optimizer=optimizer,
            dropped=[k for k in sd if k.split(".", 1)[0] not in ("base_encoder", "momentum_encoder", "predictor")],
            layout=layout,
        )

    def pack(self, backbone, heads, meta):
        layout = meta.get("layout") or {}
        extra = json.loads(layout.get("mocov3") or "{}")
        arch = layout.get("arch") or _official_moco_arch(meta.get("arch") or "")
        head = layout.get("head") or ("head." if arch.startswith("vit") else "fc.")
        teacher = heads.get("momentum_encoder", {})
        sd = {f"base_encoder.{k}": v for k, v in backbone.items()}
        sd.update({f"base_encoder.{head}{k}": v for k, v in heads.get("projector", {}).items()})
        sd.update({f"momentum_encoder.{k}": v for k, v in sub(teacher, "backbone.").items()})
        sd.update({f"momentum_encoder.{head}{k}": v for k, v in sub(teacher, "projector.").items()})
        sd.update({f"predictor.{k}": v for k, v in heads.get("predictor", {}).items()})
        if layout.get("module_prefix", True):
            sd = {f"module.{k}": v for k, v in sd.items()}
        n_base = _n_params(backbone) + _n_params(heads.get("projector", {}))
        n_all = 2 * n_base + _n_params(heads.get("predictor", {}))
        opt = meta.get("optimizer")
        if opt is not None:
            groups = [dict(g) for g in opt["param_groups"]]
            if extra.get("teacher_params"):  # the momentum encoder's positions, where the file had them
                gi, pos, first, count = extra["teacher_params"]
                ids = list(range(first, first + count))
                groups[gi]["params"] = groups[gi]["params"][:pos] + ids + groups[gi]["params"][pos:]
            opt = {"state": opt["state"], "param_groups": groups}
        else:  # no optimiser state: a fresh one with the file's (or main_moco.py's default) settings
            group = (extra.get("param_groups") or [None])[0] or (
                {"lr": 0.0, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False}
                if arch.startswith("vit")
                else {"lr": 0.0, "weight_decay": 1e-6, "momentum": 0.9, "trust_coefficient": 0.001}
            )
            opt = {"state": {}, "param_groups": [{**group, "params": list(range(n_all))}]}
        scaler = extra.get("scaler") or {
            "scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0
        }  # fmt: skip
        return {"epoch": meta.get("epoch") or 0, "arch": arch, "state_dict": sd, "optimizer": opt, "scaler": scaler}


def _official_moco_arch(arch: str) -> str:
    """main_moco.py's ``--arch`` for an e2mc arch (torchvision names as they are; the two timm ViTs)."""
    for official, ours in _MOCO_ARCHS.items():
        if arch == ours:
            return official
    return arch.split(":")[-1]


_FB = "https://dl.fbaipublicfiles.com/moco-v3"


def _release(name: str, arch: str, epochs: int, top1: str, recipe: str) -> Release:
    return Release(
        f"mocov3:{name}",
        method="mocov3",
        arch=arch,
        layout="mocov3",
        heads=True,
        url=f"{_FB}/{name}/{name}.pth.tar",
        details=f"{epochs} epochs, batch 4096 ({recipe}), ImageNet linear top-1 {top1}",
    )


_RELEASES = (
    _release("r-50-100ep", "resnet50", 100, "68.9", "LARS"),
    _release("r-50-300ep", "resnet50", 300, "72.8", "LARS"),
    _release("r-50-1000ep", "resnet50", 1000, "74.6", "LARS"),
    _release("vit-s-300ep", "timm:vit_small_patch16_224:num_heads=12", 300, "73.2", "AdamW, batch 1024"),
    _release("vit-b-300ep", "timm:vit_base_patch16_224", 300, "76.7", "AdamW"),
)


@register
class MoCoV3(Method):
    name, heads, outputs = "mocov3", ("projector", "predictor"), ("z", "p", "k")
    teacher = {"momentum_encoder": SOURCES}
    concat_views = False  # the official code calls the encoders on each view alone
    adapters = (MoCoV3Adapter(),)  # checkpoint_XXXX.pth.tar / r-50-*.pth.tar / vit-*-300ep.pth.tar
    releases = _RELEASES
    releases_source = "facebookresearch/moco-v3 CONFIG.md, commit c349e6e (CONFIG.md of 2021-08-16)"
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
            0.0, 0, help="softmax temperature (main_moco.py's moco-t); 0: the official value, 1.0 (ResNet) or 0.2 (ViT)"
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
        from e2mc.criteria.mocov3 import MoCoV3Loss

        return MoCoV3Loss(temperature=cfg.method.moco_t or 1.0)

    def base_loss(self, out, criterion, zs, ctx):
        t = ctx.cfg.method.moco_t if ctx.cfg is not None else criterion.temperature
        if not t:  # the official value by arch: --moco-t=.2 for the ViTs, 1.0 (default) otherwise
            vit = "vit" in str(getattr(ctx.model, "arch", "") or "")
            criterion.temperature = 0.2 if vit else 1.0
        return criterion(out["p"][:2], out["k"][:2])

    def before_forward(self, ctx):
        ema_update(ctx.model.momentum_encoder, ctx.model, SOURCES, momentum_at(ctx))
