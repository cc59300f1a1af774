"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of Sinkhorn codes over multi-crop views.

Heads: ``projector``: Linear, BN1d, ReLU, Linear (``hidden=0``: a single Linear); ``prototypes``:
``nn.Linear(out, K, bias=False)``. Default sizes ``hidden = d``, ``out = min(128, d)``,
``prototypes = 3000 if d >= 2048 else 1000``. State: the queue of past embeddings
(``queue_length > 0``), saved under ``"swav_queue"`` as one process would hold it. Hooks: the
prototypes are L2-normalised before every forward and frozen for the first
``freeze_prototypes_iters`` steps of this run. E2MC attaches to the projection (before L2
normalisation) of the two large crops.

Official files (facebookresearch/swav): the released ``swav_<tag>_pretrain.pth.tar`` is a raw
``{"module.<trunk>", "module.projection_head.*", "module.prototypes.weight"}`` state dict, and
``main_swav.py``'s checkpoint wraps the same dict as ``{"epoch", "state_dict", "optimizer"}``
(layout ``swav``, flat kind ``"swav"``: trunk at the root).
"""

from __future__ import annotations

from e2mc.errors import CheckpointError, ConfigError
from e2mc.methods.adapter import Adapter, epoch_of, flat_parts, inner_kind
from e2mc.methods.base import Method, Option, register
from e2mc.methods.layout import FlatKind, is_tensor_dict, join_flat, sub
from e2mc.methods.release import Release


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


class SwAVKind(FlatKind):
    """Trunk at the root, ``projection_head.*``, ``prototypes.*``. ``prototypes`` is also an
    SSLModel head: it ranks below the SSLModel naming (``backbone.*``)."""

    name, method, tops = "swav", "swav", ("projection_head", "prototypes")

    def score(self, sd, tops):
        return 0.7 if "projection_head" in tops or "prototypes" in tops else 0.0

    def split(self, sd):
        heads = {"projector": sub(sd, "projection_head."), "prototypes": sub(sd, "prototypes.")}
        return {k: v for k, v in sd.items() if not k.startswith(("projection_head.", "prototypes."))}, heads, []

    def join(self, backbone, heads):
        out = dict(backbone)
        out.update({f"projection_head.{k}": v for k, v in heads.get("projector", {}).items()})
        out.update({f"prototypes.{k}": v for k, v in heads.get("prototypes", {}).items()})
        return out


class SwAVAdapter(Adapter):
    name, expected = "swav", ("module.prototypes.weight", "module.projection_head.0.weight", "module.conv1.weight")
    description = "SwAV raw state dict {'module.<trunk>', 'module.projection_head.*', 'module.prototypes.weight'}"
    kind = SwAVKind()

    def detect(self, obj):
        if inner_kind(obj) == "swav":
            return 0.8
        return 0.7 if isinstance(obj, dict) and inner_kind(obj.get("state_dict")) == "swav" else 0.0

    def split(self, obj):
        wrapped = not is_tensor_dict(obj) and isinstance(obj, dict)
        sd = obj.get("state_dict") if wrapped else obj
        if inner_kind(sd) != "swav":
            raise CheckpointError("not a SwAV checkpoint: no 'module.projection_head.*' / 'module.prototypes.*' keys")
        parts = flat_parts(
            sd, "swav", epoch=epoch_of(obj) if wrapped else None, optimizer=obj.get("optimizer") if wrapped else None
        )
        parts.layout["wrapped"] = wrapped
        return parts

    def pack(self, backbone, heads, meta):
        layout = meta.get("layout") or {}
        sd = join_flat(backbone, heads, {"kind": "swav", "module_prefix": layout.get("module_prefix", True)})
        if not layout.get("wrapped"):
            return sd
        out = {"epoch": meta.get("epoch") or 0, "state_dict": sd}
        if meta.get("optimizer") is not None:  # main_swav.py's save_dict: restart_from_checkpoint reloads it
            out["optimizer"] = meta["optimizer"]
        return out


def _release(tag: str, epochs: int, batch: int, crops: str, top1: str) -> Release:
    return Release(
        f"swav:resnet50-{tag.replace('_', '-')}",
        method="swav",
        arch="resnet50",
        layout="swav",
        heads=True,
        url=f"https://dl.fbaipublicfiles.com/deepcluster/swav_{tag}_pretrain.pth.tar",
        details=f"{epochs} epochs, batch {batch}, crops {crops}, ImageNet linear top-1 {top1}",
    )


@register
class SwAV(Method):
    name, heads, outputs = "swav", ("projector", "prototypes"), ("z", "scores")
    adapters = (SwAVAdapter(),)  # swav_800ep_pretrain.pth.tar (raw module.* state dict) and main_swav.py's checkpoint
    releases = (
        _release("800ep", 800, 4096, "2x224 + 6x96", "75.3"),
        _release("400ep", 400, 4096, "2x224 + 6x96", "74.6"),
        _release("200ep", 200, 4096, "2x224 + 6x96", "73.9"),
        _release("100ep", 100, 4096, "2x224 + 6x96", "72.1"),
        _release("200ep_bs256", 200, 256, "2x224 + 6x96", "72.7"),
        _release("400ep_bs256", 400, 256, "2x224 + 6x96", "74.3"),
        _release("400ep_2x224", 400, 4096, "2x224", "70.1"),
    )
    releases_source = "facebookresearch/swav README, commit 06b1b7c (2021-09-21)"
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
        from e2mc.criteria.swav import SwAVLoss

        m = cfg.method
        return SwAVLoss(
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
        from e2mc.criteria.swav import SwAVQueue

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
