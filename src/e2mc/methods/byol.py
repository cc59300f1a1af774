"""BYOL (Grill et al., NeurIPS 2020): the online network predicts a momentum target network's
projection of the other view.

Online: ``backbone`` + ``projector`` (Linear(h), BN1d, ReLU, Linear(d)) + ``predictor`` (same
shape, d -> h -> d); defaults ``proj_hidden = pred_hidden = 4096``, ``proj_dim = 256`` (the official
config for every backbone). Target (``Method.teacher``): slot ``target`` holds frozen copies of
``backbone`` and ``projector`` (state-dict ``target.backbone.*``, ``target.projector.*``), moved
after every optimiser step by ``t <- m t + (1 - m) o`` with the official cosine schedule from
``method.momentum`` (0.996, the official base for 1000 epochs) to 1; a continuation starts at
``method.continue_momentum`` (1.0: the target is held where the released run left it, unless set).
The target runs in train mode with its own BatchNorm statistics (the official ``target_state``).
Each view goes through the networks alone (``concat_views = False``: BatchNorm statistics per
view, as the official ``apply_once_fn`` per view).

E2MC and the other add-ons attach to the ONLINE projection ``z`` of the two views (the projector
output, before the predictor; not the target's).

Sources: google-deepmind/deepmind-research ``byol/`` (``byol_experiment.py`` 4822a45,
``utils/networks.py`` ``MLP`` 500ffd8, ``configs/byol.py`` 4822a45, ``utils/schedules.py``
``target_ema`` 8457046, ``utils/augmentations.py`` 923ad3c, ``utils/dataset.py`` 2e866f1). The
heads' module layout is solo-learn's torch port (vturrisi/solo-learn ``solo/methods/byol.py``,
9187ea3), the files e2mc loads: its projector's last Linear has a bias, where the Haiku MLP's has
none (``with_bias=False``).
"""

from __future__ import annotations

from e2mc.methods.base import Method, register
from e2mc.methods.momentum import ema_update, momentum_at, momentum_options

ONLINE = ("backbone", "projector")  # what the target copies


def byol_mlp(in_dim: int, hidden: int, out: int):
    """BYOL's projector / predictor: Linear, BN1d, ReLU, Linear (keys ``0.* 1.* 3.*``)."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


@register
class BYOL(Method):
    name, heads, outputs = "byol", ("projector", "predictor"), ("z", "p", "t")
    teacher = {"target": ONLINE}
    concat_views = False
    layouts = ("byol",)  # solo-learn's Lightning .ckpt (backbone, projector, predictor, momentum_*)
    addon_input = "online projector output z of the two views (not the predictor's, not the target's)"
    # deepmind-research byol/utils/augmentations.py (923ad3c) augment_config and utils/dataset.py
    # (2e866f1) _decode_and_random_crop: crop area (0.08, 1), ratio (3/4, 4/3), BICUBIC resize to
    # 224; flip 0.5; ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8; grayscale 0.2; blur sigma (0.1, 2),
    # kernel ~ size / 10, p=1.0 / 0.1; solarisation p=0.0 / 0.2 (asymmetric views)
    view_recipe = dict(
        n_large=2,
        large_scale=(0.08, 1.0),
        jitter=(0.4, 0.4, 0.2, 0.1),
        blur_p=(1.0, 0.1),
        solarize_p=(0.0, 0.2),
        interpolation="bicubic",
        small_images=dict(blur_p=(0.0,)),
    )
    e2mc_defaults = (1.0, 25.0, "gaussian_cdf")  # no paper value for BYOL: SimSiam's (the same predictor scheme)
    paper_eps = 1.1920928955078125e-07  # torch.finfo(torch.float32).eps, as the paper's SimSiam estimator
    options = momentum_options(0.996)

    def default_head_sizes(self, in_dim):
        return {"proj_hidden": 4096, "proj_dim": 256, "pred_hidden": 4096}

    def build_heads(self, in_dim, sizes):
        return {
            "projector": byol_mlp(in_dim, sizes["proj_hidden"], sizes["proj_dim"]),
            "predictor": byol_mlp(sizes["proj_dim"], sizes["pred_hidden"], sizes["proj_dim"]),
        }

    def head_sizes_from_weights(self, heads):
        proj, pred, out = heads.get("projector", {}), heads.get("predictor", {}), {}
        if "0.weight" in proj and "3.weight" in proj:
            out["proj_hidden"], out["proj_dim"] = int(proj["0.weight"].shape[0]), int(proj["3.weight"].shape[0])
        if "0.weight" in pred:
            out["pred_hidden"], out["proj_dim"] = int(pred["0.weight"].shape[0]), int(pred["0.weight"].shape[1])
        return out

    def forward_heads(self, model, features, sizes, images):
        import torch

        z = model.projector(features)
        p = model.predictor(z)
        with torch.no_grad():  # the target: its own BatchNorm statistics, no gradient
            t = model.target["projector"](model.target["backbone"](images))
        return {"z": list(z.split(sizes)), "p": list(p.split(sizes)), "t": list(t.split(sizes))}

    def build_criterion(self, cfg):
        from e2mc.criteria import build_criterion

        return build_criterion("byol")

    def base_loss(self, out, criterion, zs, ctx):
        return criterion(out["p"][:2], out["t"][:2])

    def after_step(self, ctx):
        ema_update(ctx.model.target, ctx.model, ONLINE, momentum_at(ctx))
