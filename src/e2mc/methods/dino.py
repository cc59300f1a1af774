"""DINO (Caron et al., ICCV 2021): self-distillation of a momentum teacher over multi-crop views.

Heads (facebookresearch/dino ``vision_transformer.py`` ``DINOHead``, commit 7c446df, same for
ResNets: main_dino.py replaces ``fc`` by an identity and puts the same head on it; BN in the head
only with main_dino.py's ``use_bn_in_head``, off by default): ``head`` = ``mlp`` (Linear, [BN1d], GELU) x
(nlayers - 1), Linear to the bottleneck; L2 normalisation; ``last_layer``, a weight-normalised
Linear without bias (keys ``last_layer.weight_g`` (K, 1), ``last_layer.weight_v`` (K, bottleneck):
the keys of torch's old ``nn.utils.weight_norm`` the official files hold, written here as one
module). Default sizes: the official hidden 2048, bottleneck 256, out 65536, 3 layers for backbones
of at least 384 features (ViT-S/16, ViT-S/8, ViT-B/16, ResNet-50); narrower test backbones get
``hidden = 4d``, ``bottleneck = min(256, d)``, ``out = 64 * bottleneck``.

Teacher: ``teacher`` = a frozen copy of ``backbone`` + ``head`` (``teacher.backbone.*``,
``teacher.head.*``); it sees the 2 global crops only, in train mode (its BN statistics are its
own), and moves by EMA after every step: momentum 0.996 cosine to 1 (``momentum_options``).

State (``"dino_center"``): the centre (1, K), an EMA (``center_momentum`` 0.9) of the teacher's
batch mean, all-reduced under ``torchrun`` as official; saved and resumed with the run.

Loss: ``criteria.dino.DINOLoss`` (student temperature 0.1), plus DINOv2's KoLeo
(``criteria.koleo``) on each global crop's backbone features times ``koleo_weight`` (0: off; DINOv2's
0.1); teacher temperature
``warmup_teacher_temp`` 0.04 -> ``teacher_temp`` 0.07, linear over ``warmup_teacher_temp_epochs``
30, per epoch (the README's recipe for ViT-S/16; main_dino.py's argparse defaults are 0.04 and 0
epochs). Hooks: per-parameter gradient clipping at ``clip_grad`` 3.0 (utils.clip_gradients: each
parameter's gradient scaled to norm <= 3, unlike ``train.grad_clip``'s global norm), the
``last_layer``'s gradients cancelled for the first ``freeze_last_layer`` epochs (1).

Continuation (``mode: continue``), each default stated here and in the README:

* the teacher momentum starts at ``continue_momentum`` 1.0 (the released run's end) unless set;
* the teacher temperature is ``teacher_temp`` from the first step (the warm-up is not run again;
  ``continue_temp_warmup=true`` runs it);
* the centre is the file's (``dino_loss.center``); a file without one (or with fresh heads) gets it
  re-estimated before the first step: the teacher's mean logits over ``center_batches`` (8)
  training batches (global crops, all ranks) (``center_init: estimate``; ``zero`` starts it at zero
  whatever the file holds, as a resume that drops ``dino_loss`` does: the naive continuation);
* the last layer is not frozen (``continue_freeze_last_layer`` 0: the official resume at epoch >= 1
  does not freeze it);
* fresh heads (a backbone-only file) are warmed up with the backbone frozen for
  ``train.head_warmup_steps`` (e2mc's generic default 0: set it, e.g. 500), then the teacher is
  copied from them and the centre estimated from the warmed-up teacher.

E2MC attaches to the head's bottleneck output (before L2 normalisation) of the 2 global crops.
"""

from __future__ import annotations

import re

from e2mc.errors import CheckpointError, ConfigError
from e2mc.methods.adapter import Adapter, Parts, epoch_of
from e2mc.methods.base import Method, Option, register
from e2mc.methods.dinov2 import RELEASES as DINOV2_RELEASES
from e2mc.methods.dinov2 import RELEASES_SOURCE as DINOV2_SOURCE
from e2mc.methods.dinov2 import TIMM_OPTIONS, DINOv2Adapter
from e2mc.methods.layout import is_tensor_dict, sub
from e2mc.methods.momentum import momentum_options
from e2mc.methods.release import Release

N_GLOBAL = 2  # the official loss takes the teacher's 2 global crops
CENTER_INITS = ("estimate", "zero")  # method.center_init: a continuation's centre


def _modules():
    """``(WeightNormLinear, DINOHead, DINOState)``: defined on first use (this module imports no torch)."""
    global _CLASSES
    if _CLASSES is None:
        import torch
        import torch.nn.functional as F
        from torch import nn

        class WeightNormLinear(nn.Module):
            """``nn.utils.weight_norm(nn.Linear(in, out, bias=False))`` as one module: the weight is
            ``weight_v * weight_g / ||weight_v||`` (norm per output row), parameters ``weight_g``
            (out, 1) and ``weight_v`` (out, in); ``weight_g`` starts at 1."""

            def __init__(self, in_dim: int, out_dim: int):
                super().__init__()
                v = nn.Linear(in_dim, out_dim, bias=False).weight.detach()  # nn.Linear's init, as official
                self.weight_g = nn.Parameter(torch.ones(out_dim, 1))
                self.weight_v = nn.Parameter(v.clone())

            def forward(self, x):
                w = self.weight_v * (self.weight_g / torch.linalg.vector_norm(self.weight_v, dim=1, keepdim=True))
                return F.linear(x, w)

        class DINOHead(nn.Module):
            """The official head: ``mlp`` -> L2 normalise -> ``last_layer`` (see the module docstring)."""

            def __init__(
                self, in_dim, out_dim, use_bn=False, norm_last_layer=True, nlayers=3, hidden=2048, bottleneck=256
            ):
                super().__init__()
                nlayers = max(int(nlayers), 1)
                if nlayers == 1:
                    self.mlp = nn.Linear(in_dim, bottleneck)
                else:
                    layers, width = [], in_dim
                    for _ in range(nlayers - 1):
                        layers.append(nn.Linear(width, hidden))
                        if use_bn:
                            layers.append(nn.BatchNorm1d(hidden))
                        layers.append(nn.GELU())
                        width = hidden
                    layers.append(nn.Linear(hidden, bottleneck))
                    self.mlp = nn.Sequential(*layers)
                for m in self.modules():
                    if isinstance(m, nn.Linear):
                        nn.init.trunc_normal_(m.weight, std=0.02)
                        nn.init.zeros_(m.bias)
                self.last_layer = WeightNormLinear(bottleneck, out_dim)
                self.last_layer.weight_g.requires_grad = not norm_last_layer

            def forward(self, x):
                return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))

        class DINOState(nn.Module):
            """The centre (1, K) and whether it is known (a fresh pre-training's zero centre is,
            as official; a continuation's missing one is not until estimated)."""

            def __init__(self, out_dim: int, known: bool):
                super().__init__()
                self.register_buffer("center", torch.zeros(1, out_dim))
                self.known = bool(known)
                self.epoch = 0  # the run's current epoch (``epoch_start``): temperature, freezing

        _CLASSES = (WeightNormLinear, DINOHead, DINOState)
    return _CLASSES


_CLASSES = None


def dino_head(in_dim: int, hidden: int = 2048, bottleneck: int = 256, out: int = 65536, nlayers: int = 3, use_bn=0):
    """The official DINOHead (``norm_last_layer``: ``weight_g`` frozen at 1).

    Example:
        >>> sorted(dino_head(8, 16, 4, 32).state_dict())
        ['last_layer.weight_g', 'last_layer.weight_v', 'mlp.0.bias', 'mlp.0.weight', 'mlp.2.bias', 'mlp.2.weight', 'mlp.4.bias', 'mlp.4.weight']
    """
    return _modules()[1](in_dim, out, bool(use_bn), True, nlayers, hidden, bottleneck)


# -- DINO (facebookresearch/dino main_dino.py, commit 7c446df) ------------------------------------
_DINO_SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}


def _unwrap(sd: dict) -> tuple[dict, bool]:
    module = bool(sd) and all(k.startswith("module.") for k in sd)
    return (sub(sd, "module.") if module else dict(sd)), module


def _dino_args(meta: dict):
    """The ``args`` Namespace an exported file carries (main_dino.py saves its argparse Namespace;
    its resume path does not read it): the fields that describe the network. A timm ViT of an
    official size is named as main_dino.py names it (``vit_small``, ``patch_size`` 16); any other
    architecture keeps e2mc's full spec in ``arch`` (``timm:NAME:key=value,...``), which is how
    ``DINOAdapter.split`` rebuilds a network its weights alone cannot describe (a head count)."""
    import argparse

    arch, sizes = str(meta.get("arch") or ""), meta.get("head_sizes") or {}
    name, patch, fields = arch, 16, arch.split(":")  # a torchvision name (resnet50) as main_dino.py has it
    if arch.startswith("timm:"):
        kwargs = dict(kv.split("=", 1) for kv in fields[2].split(",") if "=" in kv) if len(fields) > 2 else {}
        official = re.fullmatch(r"(vit_(?:tiny|small|base))_patch(\d+)_224", fields[1])
        if official and not kwargs:
            name, patch = official.group(1), int(official.group(2))
        else:
            named = re.search(r"_patch(\d+)", fields[1])
            name, patch = arch, int(kwargs.get("patch_size") or (named.group(1) if named else 16))
    return argparse.Namespace(
        arch=name,
        patch_size=patch,
        out_dim=int(sizes.get("out", 65536)),
        norm_last_layer=True,
        use_bn_in_head=bool(sizes.get("use_bn", 0)),
        epochs=int(meta.get("epoch") or 0),
    )


class DINOAdapter(Adapter):
    """main_dino.py's ``checkpoint.pth``: ``{"student": DDP state dict (module.backbone.*,
    module.head.mlp.*, module.head.last_layer.weight_g/_v), "teacher": the same without ``module.``
    (ViTs) or with it (networks with BatchNorm: main_dino.py wraps that teacher in DDP),
    "optimizer", "epoch", "args" (argparse.Namespace), "dino_loss": {"center": (1, K)},
    "fp16_scaler"}``. The student's backbone and head are the model's, the teacher its ``teacher``
    slot, the centre the method state (a file without ``dino_loss``: re-estimated by a
    continuation). Backbone-only releases (``*_pretrain.pth``) are the ``timm`` / ``torchvision``
    layouts."""

    name, expected = "dino", ("student", "teacher", "optimizer", "epoch", "args", "dino_loss")
    names_arch = True  # args.arch: e2mc's spec for a ViT of no official size
    description = "DINO checkpoint {'student': {'module.backbone.*', 'module.head.*'}, 'teacher', 'dino_loss', ...}"

    def detect(self, obj):
        ok = isinstance(obj, dict) and is_tensor_dict(obj.get("student")) and "format" not in obj
        return (
            0.9
            if ok and any(k.split(".")[:2] == ["module", "head"] or k.startswith("head.") for k in obj["student"])
            else 0.0
        )

    def split(self, obj):
        if not isinstance(obj, dict) or not is_tensor_dict(obj.get("student")):
            raise CheckpointError("not a DINO checkpoint: no 'student' state dict (main_dino.py's checkpoint.pth)")
        student, s_mod = _unwrap(obj["student"])
        teacher, t_mod = _unwrap(obj["teacher"]) if is_tensor_dict(obj.get("teacher")) else ({}, False)
        backbone, head = sub(student, "backbone."), sub(student, "head.")
        if not backbone or not head:
            raise CheckpointError(
                "DINO checkpoint whose student lacks 'backbone.*' or 'head.*' keys: not main_dino.py's"
            )
        heads = {"head": head}
        kept = {k: v for k, v in teacher.items() if k.startswith(("backbone.", "head."))}
        if kept:
            heads["teacher"] = kept
        dropped = [f"student.{k}" for k in student if not k.startswith(("backbone.", "head."))]
        dropped += [f"teacher.{k}" for k in teacher if k not in kept]
        parts = Parts(
            backbone, heads, method="dino", epoch=epoch_of(obj), optimizer=obj.get("optimizer"), dropped=dropped
        )
        arch = getattr(obj.get("args"), "arch", None)
        if isinstance(arch, str) and arch.startswith("timm:"):  # e2mc's export of a ViT of no official size
            parts.arch = arch
        center = obj.get("dino_loss", {}).get("center") if isinstance(obj.get("dino_loss"), dict) else None
        if center is not None:
            parts.method_state = {"center": center, "known": True}
        else:
            parts.notes.append(
                "no dino_loss centre in the file: a continuation re-estimates it (method.center_batches)"
            )
        if getattr(obj.get("args"), "norm_last_layer", True) is False:  # e.g. the ViT-S/16 recipe
            parts.notes.append(
                "trained with main_dino.py's norm_last_layer=False (last_layer.weight_g learned): continue with "
                "--set method.norm_last_layer=false to keep training it"
            )
        parts.layout = {
            "kind": "dino",
            "student_module": s_mod,
            "teacher_module": t_mod,
            "fp16_scaler": "fp16_scaler" in obj,
            "dino_loss": center is not None,
        }
        return parts

    def pack(self, backbone, heads, meta):
        layout, arch = meta.get("layout") or {}, str(meta.get("arch") or "")
        t_mod = layout.get("teacher_module", not arch.startswith("timm:"))  # a BN network's teacher is DDP-wrapped
        s_pre = "module." if layout.get("student_module", True) else ""
        student = {f"{s_pre}backbone.{k}": v for k, v in backbone.items()}
        student.update({f"{s_pre}head.{k}": v for k, v in heads.get("head", {}).items()})
        teacher = heads.get("teacher") or {
            **{f"backbone.{k}": v for k, v in backbone.items()},
            **{f"head.{k}": v for k, v in heads.get("head", {}).items()},
        }
        out: dict = {"student": student, "teacher": {("module." if t_mod else "") + k: v for k, v in teacher.items()}}
        if meta.get("optimizer") is not None:
            out["optimizer"] = meta["optimizer"]
        out["epoch"] = meta.get("epoch") or 0
        out["args"] = _dino_args(meta)
        state = meta.get("method_state")
        if isinstance(state, dict) and state.get("center") is not None:
            out["dino_loss"] = {"center": state["center"]}
        if layout.get("fp16_scaler", True):  # main_dino.py's default --use_fp16 true
            out["fp16_scaler"] = {**_DINO_SCALER, "_growth_tracker": 0}
        return out


_FB = "https://dl.fbaipublicfiles.com"
_XCIT = "its XCiT backbone (facebookresearch/xcit) is not one that e2mc.models.backbones builds"


def _release(tag: str, folder: str, arch: str, params: str, knn: str, top1: str, why=None) -> tuple[Release, ...]:
    """A DINO release: the teacher's backbone (``*_pretrain.pth``: timm / torchvision keys) and
    main_dino.py's full checkpoint (student, teacher, optimiser, centre)."""
    kw = dict(method="dino", arch=arch, params=params, details=f"ImageNet k-NN {knn}, linear top-1 {top1}")
    kw["unsupported"] = why
    backbone = "torchvision" if arch.startswith("resnet") else "timm"
    base = f"{_FB}/dino/dino_{folder}_pretrain/dino_{folder}_pretrain"
    return (
        Release(f"dino:{tag}", layout=backbone, heads=False, url=f"{base}.pth", **kw),
        Release(f"dino:{tag}-full", layout="dino", heads=True, url=f"{base}_full_checkpoint.pth", **kw),
    )


_RELEASES = (
    *_release("vit-small16", "deitsmall16", "timm:vit_small_patch16_224", "21M", "74.5%", "77.0%"),
    *_release("vit-small8", "deitsmall8", "timm:vit_small_patch8_224", "21M", "78.3%", "79.7%"),
    *_release("vit-base16", "vitbase16", "timm:vit_base_patch16_224", "85M", "76.1%", "78.2%"),
    *_release("vit-base8", "vitbase8", "timm:vit_base_patch8_224", "85M", "77.4%", "80.1%"),
    *_release("resnet50", "resnet50", "resnet50", "23M", "67.5%", "75.3%"),
    *_release("xcit-small-12-p16", "xcit_small_12_p16", "xcit:small_12_p16", "26M", "76.0%", "77.8%", _XCIT),
    *_release("xcit-small-12-p8", "xcit_small_12_p8", "xcit:small_12_p8", "26M", "77.1%", "79.2%", _XCIT),
    *_release("xcit-medium-24-p16", "xcit_medium_24_p16", "xcit:medium_24_p16", "84M", "76.4%", "78.8%", _XCIT),
    *_release("xcit-medium-24-p8", "xcit_medium_24_p8", "xcit:medium_24_p8", "84M", "77.9%", "80.3%", _XCIT),
)


@register
class DINO(Method):
    name, heads, outputs = "dino", ("head",), ("z", "s", "t")
    teacher = {"teacher": ("backbone", "head")}
    adapters = (DINOAdapter(), DINOv2Adapter())  # main_dino.py's checkpoint.pth; DINOv2's *_pretrain.pth
    releases = _RELEASES + DINOV2_RELEASES
    releases_source = f"facebookresearch/dino README, commit 7c446df (2023-04-18); DINOv2: {DINOV2_SOURCE}"
    timm_options = TIMM_OPTIONS  # DINOv2's timm ViTs: the official position-embedding resampling
    addon_input = "head bottleneck output (before L2 normalisation) of the 2 global crops"
    # facebookresearch/dino main_dino.py DataAugmentationDINO (commit 7c446df): 2 x
    # RandomResizedCrop(224, scale (0.4, 1), BICUBIC) + 8 x (96, scale (0.05, 0.4)); flip;
    # ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8; grayscale 0.2; blur p=1.0 / 0.1 / 0.5 (local);
    # solarisation p=0 / 0.2 / 0
    view_recipe = dict(
        n_large=2,
        large_scale=(0.4, 1.0),
        n_small=8,
        small_scale=(0.05, 0.4),
        jitter=(0.4, 0.4, 0.2, 0.1),
        blur_p=(1.0, 0.1) + (0.5,) * 8,
        solarize_p=(0.0, 0.2) + (0.0,) * 8,
        interpolation="bicubic",
        small_images=dict(blur_p=(0.0,)),
    )
    e2mc_defaults = (10.0, 1.0, "sigmoid")  # e2mc's choice (VICReg's): the E2MC paper has no DINO runs
    paper_eps = 1e-7  # likewise
    options = {
        "student_temp": Option(0.1, 0, lo_open=True),
        "teacher_temp": Option(0.07, 0, lo_open=True, help="teacher temperature after the warm-up"),
        "warmup_teacher_temp": Option(0.04, 0, lo_open=True, help="teacher temperature at epoch 0"),
        "warmup_teacher_temp_epochs": Option(30, 0, help="epochs of the linear temperature warm-up"),
        "continue_temp_warmup": Option(False, help="true: a continuation runs the temperature warm-up again"),
        "center_momentum": Option(0.9, 0, hi=1),
        "center_batches": Option(8, 1, help="batches a continuation estimates a missing centre from"),
        "center_init": Option(
            "estimate",
            help="a continuation's centre: estimate (the file's, else estimated) or zero (naive)",
            choices=CENTER_INITS,
        ),
        "clip_grad": Option(3.0, 0, help="per-parameter gradient norm cap (official); 0: off"),
        "freeze_last_layer": Option(1, 0, help="epochs with the last layer frozen (pre-training)"),
        "continue_freeze_last_layer": Option(0, 0, help="the same for a continuation"),
        "norm_last_layer": Option(True, help="weight_g of the last layer fixed at 1 (official default)"),
        "local_crops_number": Option(8, 0, help="small (local) crops besides the 2 global ones (official 8)"),
        "koleo_weight": Option(0.0, 0, help="DINOv2's KoLeo on the global crops' backbone features (its 0.1); 0: off"),
        **momentum_options(0.996),
    }
    state_key = "dino_center"

    def view_fields(self, cfg):
        """The recipe with ``local_crops_number`` local crops (the ``local_crops_number`` argument of main_dino.py)."""
        k = int(cfg.method.local_crops_number)
        fields = dict(self.view_recipe, n_small=k)
        fields["blur_p"], fields["solarize_p"] = (
            fields["blur_p"][:2] + (0.5,) * k,
            fields["solarize_p"][:2] + (0.0,) * k,
        )
        return fields

    # -- heads ------------------------------------------------------------------------------
    def default_head_sizes(self, in_dim):
        d = int(in_dim)
        if d >= 384:
            return {"hidden": 2048, "bottleneck": 256, "out": 65536, "nlayers": 3, "use_bn": 0}
        b = min(256, d)
        return {"hidden": 4 * d, "bottleneck": b, "out": 64 * b, "nlayers": 3, "use_bn": 0}

    def build_heads(self, in_dim, sizes):
        return {
            "head": dino_head(
                in_dim, sizes["hidden"], sizes["bottleneck"], sizes["out"], sizes["nlayers"], sizes["use_bn"]
            )
        }

    def head_sizes_from_weights(self, heads):
        head = heads.get("head") or {}
        out = {}
        if "last_layer.weight_v" in head:
            out["out"], out["bottleneck"] = (int(n) for n in head["last_layer.weight_v"].shape)
        if "mlp.weight" in head:
            out["nlayers"] = 1
        linear = sorted(
            int(k.split(".")[1]) for k in head if k.startswith("mlp.") and k.endswith(".weight") and head[k].dim() == 2
        )
        if linear:
            out["nlayers"], out["hidden"] = len(linear), int(head[f"mlp.{linear[0]}.weight"].shape[0])
            out["use_bn"] = int(any(k.endswith("running_mean") for k in head))
        return out

    def forward_heads(self, model, features, sizes, images):
        import torch
        import torch.nn.functional as F

        z = model.head.mlp(features)
        s = model.head.last_layer(F.normalize(z, dim=-1, p=2))
        out = {"z": list(z.split(sizes)), "s": list(s.split(sizes)), "t": []}
        first = int(getattr(model, "group_start", 0))  # the index of this group's first view
        n = max(0, min(len(sizes), N_GLOBAL - first))  # the global crops among them
        teacher = getattr(model, "teacher", None)
        if n and teacher is not None:
            with torch.no_grad():
                rows = sum(sizes[:n])
                t = teacher["head"](teacher["backbone"](images[:rows]))
            out["t"] = list(t.split(sizes[:n]))
        return out

    # -- loss and state ----------------------------------------------------------------------
    def build_criterion(self, cfg):
        from e2mc.criteria.dino import DINOLoss

        if cfg.train.precision == "fp16" and cfg.method.clip_grad:
            raise ConfigError(
                "DINO's per-parameter gradient clip (method.clip_grad) needs unscaled gradients: use "
                "train.precision=bf16 or fp32, or set method.clip_grad=0"
            )
        return DINOLoss(student_temp=cfg.method.student_temp)

    def base_loss(self, out, criterion, zs, ctx):
        import torch

        from e2mc.criteria.dino import update_center

        state = ctx.state
        t = out["t"]
        if len(t) != N_GLOBAL:
            raise ConfigError(
                f"DINO needs {N_GLOBAL} global crops through the teacher, got {len(t)}; use its view recipe"
            )
        center = state.center if state is not None else torch.zeros(1, t[0].shape[1], device=t[0].device)
        temp = teacher_temp(ctx.cfg, state.epoch if state is not None else 0) if ctx.cfg is not None else 0.07
        terms = criterion(out["s"], t, center, temp)
        weight = float(getattr(ctx.cfg.method, "koleo_weight", 0.0)) if ctx.cfg is not None else 0.0
        if weight > 0:  # DINOv2 (ssl_meta_arch.py): each global crop's class tokens alone, per process
            from e2mc.criteria.koleo import KoLeoLoss

            koleo = KoLeoLoss()(list(out["features"][:N_GLOBAL]))["loss"]
            terms = {**terms, "loss": terms["loss"] + weight * koleo, "koleo": koleo.detach()}
        if state is not None:
            update_center(state.center, t, ctx.cfg.method.center_momentum)
        return terms

    def build_state(self, cfg, model, world_size, global_batch, log):
        """The centre (zeros: known in a pre-training, to be estimated in a continuation until a
        file gives it); also sets ``norm_last_layer`` on the model's head."""
        model.head.last_layer.weight_g.requires_grad_(not cfg.method.norm_last_layer)
        zero = cfg.mode != "continue" or cfg.method.center_init == "zero"
        return _modules()[2](int(model.head.last_layer.weight_v.shape[0]), zero)

    def save_state(self, state, per_device_batch):
        return {"center": state.center.detach().cpu().clone(), "known": state.known}

    def load_state(self, state, saved, per_device_batch, log):
        if state is None or not saved or saved.get("center") is None:
            return
        c = saved["center"]
        if tuple(c.shape) != tuple(state.center.shape):
            log(f"the stored DINO centre is {tuple(c.shape)}, this head's {tuple(state.center.shape)}: re-estimated")
            state.known = False
            return
        state.center.copy_(c.reshape(state.center.shape))
        state.known = bool(saved.get("known", True))

    def init_state(self, state, report, cfg, log):
        """A new run's centre from the file it starts from (its ``dino_loss.center``), unless its
        heads were built fresh; ``known`` stays False in a continuation without one."""
        saved = getattr(report, "method_state", None) if report is not None else None
        if cfg.mode == "continue" and cfg.method.center_init == "zero":
            log("DINO centre: zero (method.center_init=zero: the file's centre, if any, is not used)")
        elif saved is not None and not getattr(report, "heads_built", None):
            self.load_state(state, saved, 0, log)
            if state.known:
                log("DINO centre: the file's")
        elif cfg.mode == "continue":
            log(
                f"DINO centre: none in the file; re-estimated from up to {cfg.method.center_batches} batches "
                "(method.center_batches) before the first step"
            )

    def prepare(self, ctx, batches) -> None:
        """Before the first step of a run's main phase: estimate a missing centre from the teacher's
        mean logits of the global crops over ``center_batches`` batches (every rank's)."""
        import torch

        from e2mc.criteria.dino import batch_center

        state = ctx.state
        if state is None or state.known:
            return
        teacher, want, sums, n = ctx.model.teacher, ctx.cfg.method.center_batches, None, 0
        saved = {k: v.clone() for k, v in teacher.state_dict().items()}  # BN running statistics unchanged
        with torch.no_grad():
            for views in batches:
                g = torch.cat(views[:N_GLOBAL])
                mean = batch_center([teacher["head"](teacher["backbone"](g))])
                sums = mean if sums is None else sums + mean
                n += 1
                if n >= want:
                    break
            teacher.load_state_dict(saved)
        if n:
            state.center.copy_(sums / n)
            state.known = True

    # -- hooks -------------------------------------------------------------------------------
    def epoch_start(self, ctx, epoch):
        if ctx.state is not None:
            ctx.state.epoch = int(epoch)

    def after_backward(self, ctx):
        """Per-parameter gradient clipping (utils.clip_gradients), then the last layer's gradients
        cancelled in its frozen epochs (utils.cancel_gradients_last_layer)."""
        import torch

        m, model = ctx.cfg.method, ctx.model
        if m.clip_grad:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                norms = torch._foreach_norm(grads)
                torch._foreach_mul_(grads, [torch.clamp(m.clip_grad / (n + 1e-6), max=1.0) for n in norms])
        frozen = (
            m.continue_freeze_last_layer if getattr(ctx.cfg, "mode", "pretrain") == "continue" else m.freeze_last_layer
        )
        epoch = ctx.state.epoch if ctx.state is not None else 0
        if epoch < frozen:
            for p in model.head.last_layer.parameters():
                p.grad = None

    def after_step(self, ctx):
        from e2mc.methods.momentum import ema_update, momentum_at

        ema_update(ctx.model.teacher, ctx.model, self.teacher["teacher"], momentum_at(ctx))


def teacher_temp(cfg, epoch: int) -> float:
    """The teacher temperature of ``epoch``: ``np.linspace(warmup_teacher_temp, teacher_temp,
    warmup_teacher_temp_epochs)[epoch]``, then ``teacher_temp`` (main_dino.py); a continuation
    uses ``teacher_temp`` throughout unless ``continue_temp_warmup``."""
    m = cfg.method
    warm = int(m.warmup_teacher_temp_epochs)
    if getattr(cfg, "mode", "pretrain") == "continue" and not m.continue_temp_warmup:
        return float(m.teacher_temp)
    if epoch >= warm:
        return float(m.teacher_temp)
    if warm == 1:
        return float(m.warmup_teacher_temp)
    return float(m.warmup_teacher_temp + (m.teacher_temp - m.warmup_teacher_temp) * epoch / (warm - 1))
