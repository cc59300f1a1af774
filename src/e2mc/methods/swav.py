"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of Sinkhorn codes over multi-crop views.

Heads: ``projector``: Linear, BN1d, ReLU, Linear (``hidden=0``: a single Linear); ``prototypes``:
``nn.Linear(out, K, bias=False)``. Default sizes ``hidden = d``, ``out = min(128, d)``,
``prototypes = 3000 if d >= 2048 else 1000``. State: the queue of past embeddings
(``queue_length > 0``), saved under ``"swav_queue"`` as one process would hold it. Hooks: the
prototypes are L2-normalised before every forward and frozen for the first
``freeze_prototypes_iters`` steps of this run. E2MC attaches to the projection (before L2
normalisation) of the two large crops.
"""

from __future__ import annotations

from e2mc.errors import ConfigError
from e2mc.methods.base import Method, Option, register


def swav_head(in_dim: int = 2048, hidden: int = 2048, out: int = 128):
    """SwAV projection head: Linear, BN1d, ReLU, Linear (``hidden=0``: a single Linear)."""
    from torch import nn

    if hidden == 0:
        return nn.Sequential(nn.Linear(in_dim, out))
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


def swav_prototypes(out: int = 128, n_prototypes: int = 3000):
    """SwAV prototypes: ``nn.Linear(out, K, bias=False)``; its weight is the (K, out) matrix."""
    from torch import nn

    return nn.Linear(out, n_prototypes, bias=False)


@register
class SwAV(Method):
    name, heads, outputs = "swav", ("projector", "prototypes"), ("z", "scores")
    layouts = ("swav",)  # swav_800ep_pretrain.pth.tar (raw module.* state dict) and main_swav.py's checkpoint
    addon_input = "projection before L2 normalisation of the two large crops"
    # facebookresearch/swav scripts/swav_800ep_pretrain.sh (commit 06b1b7c): nmb_crops 2 6,
    # size_crops 224 96, min_scale_crops 0.14 0.05, max_scale_crops 1. 0.14; src/multicropdataset.py:
    # RandomResizedCrop (bilinear), get_color_distortion(s=1.0) = ColorJitter(0.8, 0.8, 0.8, 0.2)
    # p=0.8 + grayscale 0.2, PILRandomGaussianBlur p=0.5 radius U(0.1, 2.), no solarisation
    view_recipe = dict(
        n_large=2,
        large_scale=(0.14, 1.0),
        n_small=6,
        small_scale=(0.05, 0.14),
        jitter=(0.8, 0.8, 0.8, 0.2),
        blur_p=(0.5,),
        solarize_p=(0.0,),
        small_images=dict(blur_p=(0.0,)),
    )
    e2mc_defaults = (10.0, 1.0, "gaussian_cdf")
    paper_eps = 1.1920928955078125e-07  # the paper's SwAV estimator: torch.finfo(torch.float32).eps
    options = {
        "temperature": Option(0.1, 0, lo_open=True),
        "sinkhorn_epsilon": Option(0.05, 0, lo_open=True),
        "sinkhorn_iterations": Option(3, 1),
        "crops_for_assign": Option([0, 1]),
        "queue_length": Option(0, 0, help="0: no queue"),
        "queue_start_step": Option(0, 0),
        "freeze_prototypes_iters": Option(0, 0),
    }
    state_key = "swav_queue"

    def default_head_sizes(self, in_dim):
        d = int(in_dim)
        return {"hidden": d, "out": min(128, d), "prototypes": 3000 if d >= 2048 else 1000}

    def build_heads(self, in_dim, sizes):
        return {
            "projector": swav_head(in_dim, sizes["hidden"], sizes["out"]),
            "prototypes": swav_prototypes(sizes["out"], sizes["prototypes"]),
        }

    def head_sizes_from_weights(self, heads):
        proj, protos, out = heads.get("projector", {}), heads.get("prototypes", {}), {}
        if "3.weight" in proj:
            out["hidden"], out["out"] = int(proj["0.weight"].shape[0]), int(proj["3.weight"].shape[0])
        elif "0.weight" in proj:
            out["hidden"], out["out"] = 0, int(proj["0.weight"].shape[0])
        if "weight" in protos:
            out["prototypes"] = int(protos["weight"].shape[0])
            out.setdefault("out", int(protos["weight"].shape[1]))
        return out

    def forward_heads(self, model, features, sizes, images):
        import torch.nn.functional as F

        z = model.projector(features)
        zs = list(z.split(sizes))  # split before the prototypes run: the autograd order of the checkpoints
        return {"z": zs, "scores": list(model.prototypes(F.normalize(z, dim=1)).split(sizes))}

    def build_criterion(self, cfg):
        from e2mc.criteria import build_criterion

        m = cfg.method
        return build_criterion(
            "swav",
            temperature=m.temperature,
            sinkhorn_epsilon=m.sinkhorn_epsilon,
            sinkhorn_iterations=m.sinkhorn_iterations,
            crops_for_assign=tuple(m.crops_for_assign),
        )

    def base_loss(self, out, criterion, zs, ctx):
        import torch.nn.functional as F

        queue = ctx.state
        if queue is not None and ctx.run_step < ctx.cfg.method.queue_start_step:
            queue = None
        protos = ctx.model.prototypes.weight if ctx.model is not None else None
        emb = [F.normalize(z.float(), dim=1) for z in out["z"]] if queue is not None else None
        return criterion(out["scores"], embeddings=emb, prototypes=protos, queue=queue)

    # -- the queue ---------------------------------------------------------------------------
    def build_state(self, cfg, model, world_size, global_batch, log):
        """The queue of past embeddings (``method.queue_length > 0``), else None. Under torchrun each
        rank keeps its own rows (official SwAV): ``queue_length`` rounded down to whole global
        batches, / world size."""
        from e2mc.criteria import SwAVQueue

        length = cfg.method.queue_length
        if length <= 0:
            return None
        rows = length
        if world_size > 1:
            usable = length - length % global_batch
            if usable == 0:
                raise ConfigError(
                    f"method.queue_length={length} is shorter than one global batch ({global_batch}); raise it "
                    f"to a multiple of {global_batch} or set it to 0 (no queue)"
                )
            if usable != length:
                log(
                    f"method.queue_length {length} -> {usable}: whole global batches of {global_batch}, as official SwAV"
                )
            rows = usable // world_size
        dim = model.prototypes.weight.shape[1]
        return SwAVQueue(rows, dim, len(cfg.method.crops_for_assign))

    def save_state(self, state, per_device_batch):
        return state.global_state(per_device_batch) if state is not None else None

    def load_state(self, state, saved, per_device_batch, log):
        if state is None or saved is None:
            return
        if not state.load_global_state(saved, per_device_batch):
            log(
                "the checkpoint's SwAV queue does not fit this run's (another queue length, world size "
                "or batch): the queue starts empty"
            )

    # -- hooks -------------------------------------------------------------------------------
    def before_forward(self, ctx):
        """L2-normalise the prototype vectors (as official SwAV does every step)."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            w = ctx.model.prototypes.weight
            w.copy_(F.normalize(w.data, dim=1, p=2))

    def after_backward(self, ctx):
        """Drop prototype gradients for the first ``freeze_prototypes_iters`` steps of this run."""
        if ctx.run_step < ctx.cfg.method.freeze_prototypes_iters:
            for p in ctx.model.prototypes.parameters():
                p.grad = None
