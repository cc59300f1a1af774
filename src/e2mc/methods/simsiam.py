"""SimSiam (Chen & He, CVPR 2021): negative cosine between one view's prediction and the other's projection.

Heads: ``projector`` (``encoder.fc`` in the official file): Linear(nb), BN, ReLU, Linear(nb), BN,
ReLU, Linear, BN(no affine); ``predictor``: Linear(nb), BN1d, ReLU, Linear. Default sizes
``proj_hidden = d``, ``proj_dim = min(2048, 4d)``, ``pred_hidden = proj_dim // 4``.
E2MC attaches to the projector output ``z`` (not the predictor's).

Official files (facebookresearch/simsiam ``main_simsiam.py``): ``checkpoint_<epoch>.pth.tar`` =
``{"epoch", "arch", "state_dict": {"module.encoder.*", "module.predictor.*"}, "optimizer"}``, the
projector inside the encoder as ``encoder.fc.*`` (layout ``simsiam``, flat kind ``"simsiam"``).
"""

from __future__ import annotations

from e2mc.errors import CheckpointError
from e2mc.methods.adapter import Adapter, epoch_of, flat_parts, inner_kind
from e2mc.methods.base import Method, register
from e2mc.methods.layout import FlatKind, join_flat, sub
from e2mc.methods.release import Release


def simsiam_projector(in_dim: int = 2048, hidden: int = 2048, out: int = 2048):
    """SimSiam projector (``encoder.fc`` in the official checkpoint); the last BN has no affine."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out),
        nn.BatchNorm1d(out, affine=False),
    )


def simsiam_predictor(dim: int = 2048, hidden: int = 512):
    """SimSiam predictor: Linear(no bias), BN1d, ReLU, Linear."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
    )


class SimSiamKind(FlatKind):
    """``encoder.*`` trunk with the projector as ``encoder.fc.*``, ``predictor.*``; other top-level
    modules are dropped. Two marks (``encoder`` and ``predictor`` or ``encoder.fc``): it outranks
    the SSLModel naming."""

    name, method, tops = "simsiam", "simsiam", ("encoder",)

    def score(self, sd, tops):
        ok = "encoder" in tops and ("predictor" in tops or any(k.startswith("encoder.fc.") for k in sd))
        return 0.9 if ok else 0.0

    def split(self, sd):
        enc = sub(sd, "encoder.")
        backbone = {k: v for k, v in enc.items() if not k.startswith("fc.")}
        dropped = [k for k in sd if not k.startswith(("encoder.", "predictor."))]
        return backbone, {"projector": sub(enc, "fc."), "predictor": sub(sd, "predictor.")}, dropped

    def join(self, backbone, heads):
        out = {f"encoder.{k}": v for k, v in backbone.items()}
        out.update({f"encoder.fc.{k}": v for k, v in heads.get("projector", {}).items()})
        out.update({f"predictor.{k}": v for k, v in heads.get("predictor", {}).items()})
        return out


class SimSiamAdapter(Adapter):
    name, expected = "simsiam", ("state_dict", "optimizer", "epoch", "arch")
    description = (
        "SimSiam checkpoint {'state_dict': {'module.encoder.*', 'module.predictor.*'}, 'optimizer', 'epoch', 'arch'}"
    )
    kind = SimSiamKind()

    def detect(self, obj):
        return 0.8 if isinstance(obj, dict) and inner_kind(obj.get("state_dict")) == "simsiam" else 0.0

    def split(self, obj):
        if not isinstance(obj, dict) or inner_kind(obj.get("state_dict")) != "simsiam":
            raise CheckpointError("not a SimSiam checkpoint: no 'state_dict' with 'module.encoder.*' keys")
        arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
        return flat_parts(obj["state_dict"], "simsiam", arch=arch, epoch=epoch_of(obj), optimizer=obj.get("optimizer"))

    def pack(self, backbone, heads, meta):
        arch = meta.get("arch") or ""
        out = {
            "epoch": meta.get("epoch") or 0,
            "arch": arch.split(":")[-1],
            "state_dict": join_flat(backbone, heads, {"kind": "simsiam", "module_prefix": True}),
        }
        if meta.get("optimizer") is not None:
            out["optimizer"] = meta["optimizer"]
        return out


def _release(folder: str, batch: int, top1: str) -> Release:
    return Release(
        f"simsiam:resnet50-bs{batch}",
        method="simsiam",
        arch="resnet50",
        layout="simsiam",
        heads=True,
        url=f"https://dl.fbaipublicfiles.com/simsiam/models/{folder}/pretrain/checkpoint_0099.pth.tar",
        details=f"100 epochs, batch {batch}, ImageNet linear top-1 {top1}",
        file=f"simsiam_{folder}_checkpoint_0099.pth.tar",  # both releases are named checkpoint_0099.pth.tar
    )


@register
class SimSiam(Method):
    name, heads, outputs = "simsiam", ("projector", "predictor"), ("z", "p")
    adapters = (SimSiamAdapter(),)  # checkpoint_0099.pth.tar (state_dict with module.encoder.* and module.predictor.*)
    releases = (_release("100ep", 512, "68.1"), _release("100ep-256bs", 256, "68.3"))
    releases_source = "facebookresearch/simsiam README, commit a7bc177 (2021-06-19)"
    addon_input = "projector output z (not the predictor's)"
    # facebookresearch/simsiam main_simsiam.py (commit a7bc177): MoCo-v2 augmentations, both views
    # alike: RandomResizedCrop(224, scale=(0.2, 1.)), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
    # grayscale 0.2, GaussianBlur sigma (.1, 2.) p=0.5 (simsiam/loader.py), no solarisation
    view_recipe = dict(
        n_large=2,
        large_scale=(0.2, 1.0),
        jitter=(0.4, 0.4, 0.4, 0.1),
        blur_p=(0.5,),
        solarize_p=(0.0,),
        small_images=dict(blur_p=(0.0,)),
    )
    e2mc_defaults = (1.0, 25.0, "gaussian_cdf")
    paper_eps = 1.1920928955078125e-07  # the paper's SimSiam estimator: torch.finfo(torch.float32).eps
    options = {}

    def default_head_sizes(self, in_dim):
        d = int(in_dim)
        proj = min(2048, 4 * d)
        return {"proj_hidden": d, "proj_dim": proj, "pred_hidden": max(1, proj // 4)}

    def derived_head_sizes(self, sizes, given):
        if "pred_hidden" not in given:
            sizes["pred_hidden"] = max(1, sizes["proj_dim"] // 4)
        return sizes

    def build_heads(self, in_dim, sizes):
        return {
            "projector": simsiam_projector(in_dim, sizes["proj_hidden"], sizes["proj_dim"]),
            "predictor": simsiam_predictor(sizes["proj_dim"], sizes["pred_hidden"]),
        }

    def head_sizes_from_weights(self, heads):
        proj, pred, out = heads.get("projector", {}), heads.get("predictor", {}), {}
        if "0.weight" in proj and "6.weight" in proj:
            out["proj_hidden"], out["proj_dim"] = int(proj["0.weight"].shape[0]), int(proj["6.weight"].shape[0])
        if "0.weight" in pred:
            out["pred_hidden"], out["proj_dim"] = int(pred["0.weight"].shape[0]), int(pred["0.weight"].shape[1])
        return out

    def forward_heads(self, model, features, sizes, images):
        z = model.projector(features)
        zs = list(z.split(sizes))  # split before the predictor runs: the autograd order of the checkpoints
        return {"z": zs, "p": list(model.predictor(z).split(sizes))}

    def build_criterion(self, cfg):
        from e2mc.criteria.simsiam import SimSiamLoss

        return SimSiamLoss()

    def base_loss(self, out, criterion, zs, ctx):
        return criterion(zs, out["p"][:2])
