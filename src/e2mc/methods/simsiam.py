"""SimSiam (Chen & He, CVPR 2021): negative cosine between one view's prediction and the other's projection.

Heads: ``projector`` (``encoder.fc`` in the official file): Linear(nb), BN, ReLU, Linear(nb), BN,
ReLU, Linear, BN(no affine); ``predictor``: Linear(nb), BN1d, ReLU, Linear. Default sizes
``proj_hidden = d``, ``proj_dim = min(2048, 4d)``, ``pred_hidden = proj_dim // 4``.
E2MC attaches to the projector output ``z`` (not the predictor's).
"""

from __future__ import annotations

from e2mc.methods.base import Method, register


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


@register
class SimSiam(Method):
    name, heads, outputs = "simsiam", ("projector", "predictor"), ("z", "p")
    layouts = ("simsiam",)  # checkpoint_0099.pth.tar (state_dict with module.encoder.* and module.predictor.*)
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
        from e2mc.criteria import build_criterion

        return build_criterion("simsiam")

    def base_loss(self, out, criterion, zs, ctx):
        return criterion(zs, out["p"][:2])
