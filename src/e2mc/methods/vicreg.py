"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): invariance, variance and covariance of the expander output.

Heads: ``projector`` (the expander): [Linear, BN1d, ReLU] x (len(sizes)-1), Linear(bias=False);
keys ``0.* 1.* 3.* 4.* 6.weight``. Default sizes ``(min(8192, 4d),) * 3`` (ResNet-50: 8192-8192-8192).
E2MC attaches to the expander output ``z`` of the two views.
"""

from __future__ import annotations

from e2mc.errors import ConfigError
from e2mc.methods.base import Method, Option, register


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


@register
class VICReg(Method):
    name, heads, outputs = "vicreg", ("projector",), ("z",)
    layouts = ("vicreg",)  # resnet50.pth (backbone) and resnet50_fullckpt.pth (main_vicreg.py's checkpoint)
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
        from e2mc.criteria import build_criterion

        m = cfg.method
        return build_criterion("vicreg", sim_weight=m.sim_weight, var_weight=m.var_weight, cov_weight=m.cov_weight)

    def base_loss(self, out, criterion, zs, ctx):
        return criterion(zs)
