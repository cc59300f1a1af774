"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny, ICML 2021): the cross-correlation of the two
views' normalised projections is pulled towards the identity.

Source: facebookresearch/barlowtwins ``main.py`` at commit 8e8d284 (2022-02-22, the README that
links the released ``ljng`` files).

Heads: ``projector``: [Linear(bias=False), BN1d, ReLU] x (len(sizes)-1), Linear(bias=False); keys
``0.weight 1.* 3.weight 4.* 6.weight``. Default sizes ``(min(8192, 4d),) * 3`` (ResNet-50:
8192-8192-8192, main.py's default projector argument; smaller backbones as VICReg's). ``bn``: the
affine-free ``BatchNorm1d(last)`` the loss normalises each view with (keys ``bn.running_mean``,
``bn.running_var``, ``bn.num_batches_tracked``, main.py's ``module.bn.*``).

Loss (``e2mc.criteria.barlowtwins``): ``on_diag + lambd * off_diag`` of ``C = bn(z1)^T bn(z2) / N``
with N the global batch (main.py divides by ``--batch-size`` and all-reduces ``c``); under
``torchrun`` the views are gathered, so ``bn`` normalises with the global batch's statistics, as
main.py's SyncBatchNorm does, on CPU too, and N processes equal one on the concatenated batch.
main.py at this commit has no scale-loss argument (commit 046eec3 replaced it with
a learning-rate-biases argument); e2mc follows it: no loss scale. Its separate bias learning rate
(0.0048 vs 0.2 for weights) is not modelled: e2mc gives every group ``optim.lr``.

E2MC attaches to the projector output ``z`` of the two views, before ``bn``. The paper gives no
E2MC values for Barlow Twins (shared/DESIGN.md lists VICReg, SwAV, SimSiam): its defaults here
are the VICReg ones (entropy 10, covariance 1, sigmoid, eps 1e-7).
"""

from __future__ import annotations

from e2mc.errors import CheckpointError, ConfigError
from e2mc.methods.adapter import Adapter, epoch_of, flat_parts, inner_kind
from e2mc.methods.base import Method, Option, register
from e2mc.methods.layout import join_flat, sub
from e2mc.methods.release import Release


def barlowtwins_projector(in_dim: int = 2048, sizes=(8192, 8192, 8192)):
    """Barlow Twins projector: (Linear without bias, BN1d, ReLU) per hidden size, then Linear without bias.

    Example:
        >>> [k for k in barlowtwins_projector(8, (16, 16, 4)).state_dict() if k.endswith("weight")]
        ['0.weight', '1.weight', '3.weight', '4.weight', '6.weight']
    """
    from torch import nn

    sizes = [int(in_dim)] + [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ConfigError(
            "barlowtwins_projector needs at least one output size, e.g. model.head_sizes={projector: [64]}"
        )
    layers: list = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


class BarlowTwinsAdapter(Adapter):
    """facebookresearch/barlowtwins ``main.py``'s ``checkpoint.pth`` (commit 8e8d284):
    ``dict(epoch=, model=<DDP state dict>, optimizer=<LARS state dict>)`` with ``module.backbone.*``
    (torchvision ResNet, ``fc`` an Identity), ``module.projector.*`` (Linear layers without bias)
    and ``module.bn.*`` (the loss's affine-free BatchNorm1d); LARS holds two groups (weights, then
    the ``ndim == 1`` parameters) with boolean filters and ``mu`` per parameter. VICReg's
    ``model.pth`` has the same top level: this one is told apart by ``bn.*`` or a bias-free
    projector, and scores above the VICReg adapter."""

    name, expected = "barlowtwins", ("epoch", "model", "optimizer")
    description = (
        "Barlow Twins checkpoint.pth {'epoch', 'model': {'module.backbone.*', 'module.projector.*' (no biases), "
        "'module.bn.*'}, 'optimizer'}"
    )

    @staticmethod
    def _inner(obj) -> dict | None:
        sd = obj.get("model") if isinstance(obj, dict) and "format" not in obj else None
        if inner_kind(sd) != "model":
            return None
        return sub(sd, "module.") if all(k.startswith("module.") for k in sd) else sd

    def detect(self, obj):
        sd = self._inner(obj)
        if sd is None:
            return 0.0
        has_bn = any(k.startswith("bn.") for k in sd)
        bias_free = "projector.0.weight" in sd and "projector.0.bias" not in sd  # VICReg's Linear has one
        return 0.9 if has_bn or bias_free else 0.0

    def split(self, obj):
        if self._inner(obj) is None:
            raise CheckpointError(
                "not a Barlow Twins checkpoint.pth: no 'model' dict with 'module.backbone.*' keys; "
                "pass main.py's checkpoint.pth, or its resnet50.pth for the backbone alone"
            )
        return flat_parts(
            obj["model"], "model", method="barlowtwins", epoch=epoch_of(obj), optimizer=obj.get("optimizer")
        )

    def pack(self, backbone, heads, meta):
        out = {
            "epoch": meta.get("epoch") or 0,
            "model": join_flat(backbone, heads, {"kind": "model", "module_prefix": True}),
        }
        if meta.get("optimizer") is not None:  # main.py's resume loads it: optimizer.load_state_dict
            out["optimizer"] = meta["optimizer"]
        return out


_FB = "https://dl.fbaipublicfiles.com/barlowtwins/ljng"
# the README's "ljng" files (hubconf.py still names the older ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051 folder);
# cached as barlowtwins_ljng_*.pth so that they do not collide with VICReg's resnet50.pth
_KW = dict(method="barlowtwins", arch="resnet50", details="1000 epochs, batch 2048, ImageNet linear top-1 73.5%")
_RELEASES = (
    Release(
        "barlowtwins:resnet50",
        layout="torchvision",
        heads=False,
        url=f"{_FB}/resnet50.pth",
        file="barlowtwins_ljng_resnet50.pth",
        **_KW,
    ),
    Release(
        "barlowtwins:resnet50-full",
        layout="barlowtwins",
        heads=True,
        url=f"{_FB}/checkpoint.pth",
        file="barlowtwins_ljng_checkpoint.pth",
        **_KW,
    ),
)


@register
class BarlowTwins(Method):
    name, heads, outputs = "barlowtwins", ("projector", "bn"), ("z",)
    adapters = (BarlowTwinsAdapter(),)  # checkpoint.pth; resnet50.pth: the generic torchvision layout
    releases = _RELEASES
    releases_source = "facebookresearch/barlowtwins README, commit 8e8d284 (2022-02-22)"
    addon_input = "projector output z of the two views (before bn)"
    # main.py ``Transform`` (commit 8e8d284): 2 x RandomResizedCrop(224, default scale (0.08, 1),
    # BICUBIC); flip 0.5; ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8; grayscale 0.2; GaussianBlur sigma
    # U(0.1, 2.0) p=1.0 / 0.1; Solarization p=0.0 / 0.2 (asymmetric views: transform, transform_prime)
    view_recipe = dict(
        n_large=2,
        large_scale=(0.08, 1.0),
        jitter=(0.4, 0.4, 0.2, 0.1),
        blur_p=(1.0, 0.1),
        blur_sigma=(0.1, 2.0),
        solarize_p=(0.0, 0.2),
        interpolation="bicubic",
        small_images=dict(blur_p=(0.0,)),
    )
    e2mc_defaults = (10.0, 1.0, "sigmoid")  # no paper values for Barlow Twins: VICReg's
    paper_eps = 1e-7  # VICReg's (the paper's VICReg script passes --epsilon 1e-7)
    options = {
        "lambd": Option(0.0051, 0, help="weight of the off-diagonal term (main.py's lambd argument)"),
    }

    def default_head_sizes(self, in_dim):
        return {"projector": [min(8192, 4 * int(in_dim))] * 3}

    def build_heads(self, in_dim, sizes):
        from torch import nn

        proj = [int(s) for s in sizes["projector"]]
        if not proj:
            raise ConfigError("barlowtwins needs at least one projector size, e.g. model.head_sizes={projector: [64]}")
        return {"projector": barlowtwins_projector(in_dim, proj), "bn": nn.BatchNorm1d(proj[-1], affine=False)}

    def head_sizes_from_weights(self, heads):
        proj = heads.get("projector", {})
        if not proj:
            return {}
        idx = sorted(int(k.split(".")[0]) for k in proj if k.endswith("weight") and proj[k].dim() == 2)
        return {"projector": [int(proj[f"{i}.weight"].shape[0]) for i in idx]}

    def forward_heads(self, model, features, sizes, images):
        return {"z": list(model.projector(features).split(sizes))}

    def build_criterion(self, cfg):
        from e2mc.criteria.barlowtwins import BarlowTwinsLoss

        return BarlowTwinsLoss(lambd=cfg.method.lambd)

    def base_loss(self, out, criterion, zs, ctx):
        # the model's bn (its running statistics move as main.py's); none in a measurement without a model
        return criterion(zs, bn=getattr(ctx.model, "bn", None))
