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

from e2mc.errors import CheckpointError
from e2mc.methods.adapter import Adapter, Parts, epoch_of
from e2mc.methods.base import Method, register
from e2mc.methods.layout import is_tensor_dict, sub
from e2mc.methods.momentum import ema_update, momentum_at, momentum_options
from e2mc.methods.release import Release

ONLINE = ("backbone", "projector")  # what the target copies


def byol_mlp(in_dim: int, hidden: int, out: int):
    """BYOL's projector / predictor: Linear, BN1d, ReLU, Linear (keys ``0.* 1.* 3.*``)."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


class SoloBYOLAdapter(Adapter):
    """solo-learn's BYOL ``.ckpt`` (vturrisi/solo-learn ``solo/methods/byol.py`` on
    ``BaseMomentumMethod``, saved by Lightning's ``trainer.save_checkpoint``; a file written that way
    is ``tests/official/gen_byol.py``). The momentum network becomes e2mc's ``target`` slot; the
    online linear probe ``classifier.*`` (and a ``momentum_classifier.*``) is dropped, the LARS state
    keeps the groups of the modules e2mc holds (``optim.restore_state``). Written back: the
    LightningModule's state dict in solo's order, the probes as zeros of their shapes (an evaluation
    head trained on detached features; main_pretrain.py learns it again), ``epoch``,
    ``global_step``, ``pytorch-lightning_version``; not the trainer's state (optimiser, scheduler,
    loops), so main_linear.py and a strict ``load_state_dict`` read the export, and
    ``resume_from_checkpoint`` does not."""

    name, expected = "byol", ("state_dict", "pytorch-lightning_version", "epoch", "global_step", "optimizer_states")
    description = "solo-learn BYOL .ckpt {'state_dict': {'backbone.*', 'momentum_backbone.*', 'predictor.*', ...}}"
    _ORDER = ("backbone", "classifier", "momentum_backbone", "momentum_classifier", "projector")
    _ORDER += ("momentum_projector", "predictor")  # the LightningModule's registration order
    _TARGET = {"momentum_backbone": "backbone", "momentum_projector": "projector"}
    _KEPT = ("backbone", "projector", "predictor")  # the optimiser groups of modules e2mc holds

    def detect(self, obj):
        sd = obj.get("state_dict") if isinstance(obj, dict) and "pytorch-lightning_version" in obj else None
        if not is_tensor_dict(sd):
            return 0.0
        tops = {k.split(".", 1)[0] for k in sd}
        return (
            0.95 if {"backbone", "momentum_backbone", "projector", "momentum_projector", "predictor"} <= tops else 0.0
        )

    def split(self, obj):
        if self.detect(obj) < 0.5:
            raise CheckpointError(
                "not a solo-learn BYOL checkpoint: no Lightning 'state_dict' with backbone, momentum_backbone, "
                "projector, momentum_projector and predictor"
            )
        sd = obj["state_dict"]
        heads = {h: sub(sd, h + ".") for h in ("projector", "predictor")}
        heads["target"] = {f"{v}.{k}": t for m, v in self._TARGET.items() for k, t in sub(sd, m + ".").items()}
        known = ("backbone.", "projector.", "predictor.", *(m + "." for m in self._TARGET))
        parts = Parts(sub(sd, "backbone."), heads, method="byol", epoch=epoch_of(obj))
        parts.dropped = [k for k in sd if not k.startswith(known)]
        cls = sd.get("classifier.weight")
        parts.layout = {
            "kind": "byol",
            "pl_version": str(obj.get("pytorch-lightning_version")),
            "global_step": int(obj.get("global_step") or 0),
            "classes": int(cls.shape[0]) if cls is not None else 0,
            "momentum_classifier": "momentum_classifier.weight" in sd,
        }
        parts.optimizer = self._online_groups((obj.get("optimizer_states") or [None])[0])
        if parts.dropped:
            parts.notes.append(f"online linear probe dropped ({len(parts.dropped)} tensors); exported as zeros")
        if sd["backbone.conv1.weight"].shape[-1] == 3:
            parts.notes.append(
                "solo-learn's CIFAR stem pads its 3x3 conv1 by 2, e2mc's by 1: features differ slightly from solo-learn's"
            )
        return parts

    def _online_groups(self, opt):
        """The stored LARS state without the probes' groups, positions renumbered (what e2mc's
        optimiser holds: backbone, projector, predictor, in that order)."""
        if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)):
            return None
        groups, state, n = [], {}, 0
        for g in opt["param_groups"]:
            if not isinstance(g, dict) or g.get("name") not in self._KEPT:
                continue
            ids = list(g.get("params", []))
            state.update({n + i: opt.get("state", {})[p] for i, p in enumerate(ids) if p in opt.get("state", {})})
            groups.append({**g, "params": list(range(n, n + len(ids)))})
            n += len(ids)
        return {"state": state, "param_groups": groups}

    def pack(self, backbone, heads, meta):
        import torch

        layout = meta.get("layout") or {}
        target = heads.get("target", {})
        mods = {
            "backbone": backbone,
            "momentum_backbone": sub(target, "backbone."),
            "projector": heads.get("projector", {}),
            "momentum_projector": sub(target, "projector."),
            "predictor": heads.get("predictor", {}),
        }
        classes = int(layout.get("classes") or 1000)  # a file of unknown origin: ImageNet's
        for probe in ("classifier", "momentum_classifier")[: 2 if layout.get("momentum_classifier") else 1]:
            mods[probe] = {"weight": torch.zeros(classes, _features(backbone)), "bias": torch.zeros(classes)}
        state = {f"{m}.{k}": v for m in self._ORDER for k, v in mods.get(m, {}).items()}
        return {
            "epoch": meta.get("epoch") or 0,
            "global_step": int(layout.get("global_step") or 0),
            "pytorch-lightning_version": layout.get("pl_version") or "2.1.2",
            "state_dict": state,
        }


def _features(backbone: dict) -> int:
    """Width of a ResNet backbone's pooled features: the channels of the last block's last conv."""
    last = [k for k in backbone if k.startswith("layer4.") and k.endswith(".weight") and backbone[k].dim() == 4]
    return int(backbone[last[-1]].shape[0]) if last else 0


_GONE = (
    "solo-learn removed its checkpoint links in April 2026 (commit 9187ea3, 'no longer accessible'); "
    "a copy you downloaded loads by its path"
)


def _solo_byol(data: str, arch: str, epochs: int, top1: str, folder: str) -> Release:
    """solo-learn's BYOL releases: Google Drive folders of one Lightning .ckpt (+ args.json) each."""
    return Release(
        f"byol:{arch}-{data}",
        method="byol",
        arch=arch,
        layout="byol",
        heads=True,
        url=f"https://drive.google.com/drive/folders/{folder}",
        details=f"solo-learn, {epochs} epochs, {data} linear top-1 {top1}",
        unsupported=_GONE,
    )


_RELEASES = (
    _solo_byol("cifar10", "resnet18", 1000, "92.58", "1KxeYAEE7Ev9kdFFhXWkPZhG-ya3_UwGP"),
    _solo_byol("cifar100", "resnet18", 1000, "70.46", "1hwsEdsfsUulD2tAwa4epKK9pkSuvFv6m"),
    _solo_byol("imagenet100", "resnet18", 400, "80.16 (online) / 80.32 (offline)", "1riOLjMawD_znO4HYj8LBN2e1X4jXpDE1"),
    _solo_byol("imagenet", "resnet50", 100, "68.63 (online) / 68.37 (offline)", "1-UXo-MttdrqiEQXfV4Duc93fA3mIdsha"),
)


@register
class BYOL(Method):
    name, heads, outputs = "byol", ("projector", "predictor"), ("z", "p", "t")
    teacher = {"target": ONLINE}
    concat_views = False
    adapters = (SoloBYOLAdapter(),)  # solo-learn's Lightning .ckpt (backbone, projector, predictor, momentum_*)
    releases = _RELEASES
    releases_source = "vturrisi/solo-learn README, commit b69b4bd (2024-01-14); links removed in 9187ea3 (2026-04-22)"
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
        from e2mc.criteria.byol import BYOLLoss

        return BYOLLoss()

    def base_loss(self, out, criterion, zs, ctx):
        return criterion(out["p"][:2], out["t"][:2])

    def after_step(self, ctx):
        ema_update(ctx.model.target, ctx.model, ONLINE, momentum_at(ctx))
