"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): invariance, variance and covariance of the expander output.

Heads: ``projector`` (the expander): [Linear, BN1d, ReLU] x (len(sizes)-1), Linear(bias=False);
keys ``0.* 1.* 3.* 4.* 6.weight``. Default sizes ``(min(8192, 4d),) * 3`` (ResNet-50: 8192-8192-8192).
E2MC attaches to the expander output ``z`` of the two views.

Official files (facebookresearch/vicreg ``main_vicreg.py``): the full checkpoint
``{"model": {"module.backbone.*", "module.projector.*"}, "optimizer", "epoch"}`` (layout
``vicreg``, the SSLModel naming under ``module.``) and the released backbone ``resnet50.pth``
(torchvision names: the generic ``torchvision`` layout).
"""

from __future__ import annotations

from e2mc.errors import CheckpointError, ConfigError
from e2mc.methods.adapter import Adapter, epoch_of, flat_parts, inner_kind
from e2mc.methods.base import Method, Option, register
from e2mc.methods.layout import join_flat
from e2mc.methods.release import Release


def vicreg_projector(in_dim: int = 2048, sizes=(8192, 8192, 8192)):
    """VICReg expander: (Linear, BN1d, ReLU) per hidden size, then Linear without bias.

    Example:
        >>> [k for k in vicreg_projector(8, (16, 16, 4)).state_dict() if k.endswith("weight")]
        ['0.weight', '1.weight', '3.weight', '4.weight', '6.weight']
    """
    from torch import nn

    sizes = [int(in_dim)] + [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ConfigError("vicreg_projector needs at least one output size")
    layers: list = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


class VICRegAdapter(Adapter):
    name, expected = "vicreg", ("model", "optimizer", "epoch")
    description = "VICReg full checkpoint {'model': {'module.backbone.*', 'module.projector.*'}, 'optimizer', 'epoch'}"

    def detect(self, obj):
        ok = isinstance(obj, dict) and "format" not in obj and inner_kind(obj.get("model")) == "model"
        return 0.8 if ok else 0.0

    def split(self, obj):
        if inner_kind(obj.get("model") if isinstance(obj, dict) else None) != "model":
            raise CheckpointError("not a VICReg full checkpoint: no 'model' dict with 'module.backbone.*' keys")
        return flat_parts(obj["model"], "model", method="vicreg", epoch=epoch_of(obj), optimizer=obj.get("optimizer"))

    def pack(self, backbone, heads, meta):
        out = {
            "model": join_flat(backbone, heads, {"kind": "model", "module_prefix": True}),
            "epoch": meta.get("epoch") or 0,
        }
        if meta.get("optimizer") is not None:
            out["optimizer"] = meta["optimizer"]
        return out


_FB = "https://dl.fbaipublicfiles.com/vicreg"
_WIDE = "VICReg's own widened ResNets, which e2mc.models.backbones does not build"


def _releases(arch: str, params: str, top1: str, supported: bool = True) -> tuple[Release, ...]:
    """The backbone (``<arch>.pth``, torchvision names) and the full checkpoint of one model."""
    why = None if supported else f"{arch} is one of {_WIDE}"
    kw = dict(method="vicreg", arch=arch, params=params, details=f"ImageNet linear top-1 {top1}", unsupported=why)
    return (
        Release(f"vicreg:{arch}", layout="torchvision", heads=False, url=f"{_FB}/{arch}.pth", **kw),
        Release(f"vicreg:{arch}-full", layout="vicreg", heads=True, url=f"{_FB}/{arch}_fullckpt.pth", **kw),
    )


@register
class VICReg(Method):
    name, heads, outputs = "vicreg", ("projector",), ("z",)
    adapters = (VICRegAdapter(),)  # resnet50_fullckpt.pth (main_vicreg.py's checkpoint); resnet50.pth: torchvision
    releases = (
        *_releases("resnet50", "23M", "73.2%"),
        *_releases("resnet50x2", "93M", "75.5%", supported=False),
        *_releases("resnet200x2", "250M", "77.3%", supported=False),
    )
    releases_source = "facebookresearch/vicreg README, commit 4e12602 (2022-12-04)"
    addon_input = "expander output z of the two views"
    # facebookresearch/vicreg augmentations.py (TrainTransform, commit 4e12602): 2 x
    # RandomResizedCrop(224, scale (0.08, 1), BICUBIC); ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8;
    # grayscale 0.2; blur p=1.0 / 0.1; solarisation p=0.0 / 0.2 (asymmetric views)
    view_recipe = dict(
        n_large=2,
        large_scale=(0.08, 1.0),
        jitter=(0.4, 0.4, 0.2, 0.1),
        blur_p=(1.0, 0.1),
        solarize_p=(0.0, 0.2),
        interpolation="bicubic",
        small_images=dict(blur_p=(0.0,)),
    )
    e2mc_defaults = (10.0, 1.0, "sigmoid")
    paper_eps = 1e-7  # the paper's VICReg script passes --epsilon 1e-7
    options = {
        "sim_weight": Option(25.0, 0, help="invariance weight"),
        "var_weight": Option(25.0, 0, help="variance weight"),
        "cov_weight": Option(1.0, 0, help="covariance weight"),
    }

    def default_head_sizes(self, in_dim):
        return {"projector": [min(8192, 4 * int(in_dim))] * 3}

    def build_heads(self, in_dim, sizes):
        return {"projector": vicreg_projector(in_dim, sizes["projector"])}

    def head_sizes_from_weights(self, heads):
        proj = heads.get("projector", {})
        if not proj:
            return {}
        idx = sorted(int(k.split(".")[0]) for k in proj if k.endswith("weight") and proj[k].dim() == 2)
        return {"projector": [int(proj[f"{i}.weight"].shape[0]) for i in idx]}

    def forward_heads(self, model, features, sizes, images):
        return {"z": list(model.projector(features).split(sizes))}

    def build_criterion(self, cfg):
        from e2mc.criteria.vicreg import VICRegLoss

        m = cfg.method
        return VICRegLoss(sim_weight=m.sim_weight, var_weight=m.var_weight, cov_weight=m.cov_weight)

    def base_loss(self, out, criterion, zs, ctx):
        return criterion(zs)
