"""Checkpoint adapters: one per published layout, in one registry (:data:`ADAPTERS`).

Each adapter recognises a loaded checkpoint object (``detect(obj) -> score in [0, 1]``), splits
it into backbone + heads in e2mc naming (``split(obj) -> Parts``) and writes a model back in its
layout (``pack(backbone, heads, meta) -> obj``). Building the model and checking keys/shapes is
shared: :func:`e2mc.models.checkpoints.model_from_parts` and :func:`e2mc.models.export.export_model`
use the registry; adapters import neither (no import circle).

=============  =====================================================================================
format         layout
=============  =====================================================================================
e2mc           ``{"format": "e2mc", "method", "arch", "cifar_stem", "head_sizes", "model", ...}``
lightning      ``{"state_dict": {<prefix>...}, "pytorch-lightning_version", "epoch", ...}``
vicreg         ``{"model": {"module.backbone.*", "module.projector.*"}, "optimizer", "epoch"}``
simsiam        ``{"state_dict": {"module.encoder.*" (projector in encoder.fc), "module.predictor.*"}, ...}``
swav           raw ``{"module.<trunk>", "module.projection_head.*", "module.prototypes.weight"}``
mocov3         ``{"state_dict": {"module.base_encoder.*" (projector in fc / head), "module.momentum_encoder.*",
               "module.predictor.*"}, "optimizer", "scaler", "epoch", "arch"}``
torchvision    raw torchvision-named backbone (VICReg ``resnet50.pth``; ``fc.*`` dropped)
timm           raw timm backbone (``head.*`` dropped)
state_dict     raw SSLModel state dict (``backbone.*``, ``projector.*``, ...)
safetensors    a ``.safetensors`` file (any of the raw layouts; metadata arch/cifar_stem)
=============  =====================================================================================
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from e2mc.errors import CheckpointError
from e2mc.models.layouts import flat_kind, is_tensor_dict, join_flat, split_flat, sub

_log = logging.getLogger(__name__)


@dataclass
class Parts:
    """A checkpoint split into e2mc naming, plus what it says about itself."""

    backbone: dict
    heads: dict
    method: str | None = None
    arch: str | None = None
    cifar_stem: bool | None = None
    head_sizes: dict | None = None
    epoch: int | None = None
    optimizer: Any = None
    dropped: list = field(default_factory=list)
    layout: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


_KIND_METHOD = {"swav": "swav", "simsiam": "simsiam"}
_KNOWN_TOPS = {"module", "backbone", "encoder", "projection_head", "prototypes", "conv1", "patch_embed"}


def _flat_parts(sd: dict, kind: str | None = None, **meta) -> Parts:
    backbone, heads, dropped, layout = split_flat(sd, kind)
    meta.setdefault("method", _KIND_METHOD.get(layout["kind"]))
    return Parts(backbone, heads, dropped=dropped, layout=layout, **meta)


def _inner_kind(sd) -> str | None:
    if not is_tensor_dict(sd):
        return None
    return flat_kind(sub(sd, "module.") if all(k.startswith("module.") for k in sd) else sd)


def _epoch(obj) -> int | None:
    e = obj.get("epoch") if isinstance(obj, dict) else None
    return int(e) if isinstance(e, (int, float)) and not isinstance(e, bool) else None


class Adapter:
    """Base adapter. Subclasses set ``name``, ``expected`` (top-level keys) and ``description``."""

    name = ""
    expected: tuple = ()
    description = ""

    def detect(self, obj) -> float:
        """Confidence in [0, 1] that ``obj`` is in this layout (>= 0.5 means recognised)."""
        raise NotImplementedError

    def split(self, obj) -> Parts:
        """Backbone/heads in e2mc naming; raises CheckpointError when ``obj`` does not fit."""
        raise NotImplementedError

    def pack(self, backbone: dict, heads: dict, meta: dict) -> dict:
        """The checkpoint object for a model's ``backbone``/``heads`` state dicts.

        ``meta``: ``method, arch, cifar_stem, head_sizes, epoch, optimizer, layout`` (the layout
        the model was loaded from, when the same format).
        """
        raise NotImplementedError

    def closeness(self, obj) -> float:
        """Overlap of ``obj``'s top-level keys with this layout's (for error messages)."""
        keys = set(obj) if isinstance(obj, dict) else set()
        want = set(self.expected)
        return len(keys & want) / max(1, len(keys | want))


class E2MCAdapter(Adapter):
    name, expected = "e2mc", ("format", "method", "arch", "cifar_stem", "head_sizes", "model")
    description = "e2mc run checkpoint {'format': 'e2mc', 'model': SSLModel state dict, ...}"

    def detect(self, obj):
        return 1.0 if isinstance(obj, dict) and obj.get("format") == "e2mc" else 0.0

    def split(self, obj):
        if not is_tensor_dict(obj.get("model")):
            raise CheckpointError("e2mc checkpoint without a 'model' state dict")
        parts = _flat_parts(
            obj["model"],
            "model",
            method=obj.get("method"),
            arch=obj.get("arch"),
            cifar_stem=obj.get("cifar_stem"),
            head_sizes=obj.get("head_sizes"),
            epoch=_epoch(obj),
            optimizer=obj.get("optimizer"),
        )
        # where a run came from: export --to original writes that layout again
        parts.layout.update(
            source_format=obj.get("source_format"),
            source_epoch=obj.get("source_epoch"),
            source_layout=dict(obj.get("source_layout") or {}),
            optimizer_params=obj.get("optimizer_params"),  # the run optimiser's parameter names, in order
        )
        written_by = obj.get("e2mc_version")
        note = check_version(written_by)
        if note:
            parts.notes.append(note)
        if written_by is not None:
            parts.layout["e2mc_version"] = str(written_by)  # export keeps it (see pack)
        return parts

    def pack(self, backbone, heads, meta):
        from e2mc import __version__

        written_by = (meta.get("layout") or {}).get("e2mc_version")  # an e2mc file exported again
        return {
            "e2mc_version": written_by or __version__,
            **({"exported_by": __version__} if written_by and written_by != __version__ else {}),
            "format": "e2mc",
            "method": meta.get("method"),
            "arch": meta.get("arch"),
            "cifar_stem": bool(meta.get("cifar_stem")),
            "head_sizes": meta.get("head_sizes") or {},
            "model": join_flat(backbone, heads, {"kind": "model"}),
            "epoch": meta.get("epoch"),
            "source_format": meta.get("source_format"),
        }


def _version(text) -> tuple[int, ...] | None:
    """``(major, minor, patch)`` of a version string such as ``"0.2.1"`` or ``"1.0.0rc1"``; None when
    it does not start with numbers."""
    import re

    found = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    return tuple(int(g or 0) for g in found.groups()) if found else None


def check_version(written_by) -> str | None:
    """The compatibility rule for e2mc checkpoints (README "Checkpoint compatibility").

    - no version (files of e2mc before it was stored), an older one, or one with this e2mc's
      major.minor: read silently (e2mc reads every layout it ever wrote);
    - a newer minor version of the same major: read, with a warning naming both versions (keys
      this e2mc does not know are ignored) -- returned, and logged;
    - a newer major version, or a version that cannot be parsed: CheckpointError (its format
      cannot be known); upgrade e2mc.
    """
    from e2mc import __version__

    if written_by is None:
        return None
    mine, theirs = _version(__version__), _version(written_by)
    if theirs is None:
        raise CheckpointError(
            f"this checkpoint says it was written by e2mc {written_by!r}, not a version e2mc {__version__} can "
            "interpret; its format cannot be known: read it with the e2mc that wrote it"
        )
    if theirs[:2] <= mine[:2]:
        return None
    if theirs[0] > mine[0]:
        raise CheckpointError(
            f"this checkpoint was written by e2mc {written_by}, a newer major version than this e2mc "
            f"{__version__}, whose format may differ: upgrade e2mc (pip install -U e2mc) to read it"
        )
    note = (
        f"checkpoint written by e2mc {written_by}, newer than this e2mc {__version__}: read as this version's "
        "format (settings it does not know are ignored); upgrade e2mc (pip install -U e2mc) if anything looks off"
    )
    _log.warning("%s", note)
    return note


class LightningAdapter(Adapter):
    name, expected = "lightning", ("state_dict", "pytorch-lightning_version", "epoch", "global_step")
    description = "PyTorch Lightning .ckpt {'state_dict': {...}, 'pytorch-lightning_version', ...}"

    def detect(self, obj):
        ok = isinstance(obj, dict) and "pytorch-lightning_version" in obj and is_tensor_dict(obj.get("state_dict"))
        return 0.9 if ok else 0.0

    def split(self, obj):
        sd = obj.get("state_dict")
        if not is_tensor_dict(sd):
            raise CheckpointError("Lightning checkpoint without a 'state_dict' of tensors")
        prefix = ""  # descend into the main submodule ("model.", "net.") down to something known
        while True:
            inner = sub(sd, prefix)
            counts = Counter(k.split(".", 1)[0] for k in inner if "." in k)
            if not counts or set(counts) & _KNOWN_TOPS:
                break
            top, n = counts.most_common(1)[0]
            if n * 2 <= len(inner):
                break
            prefix += top + "."
        parts = _flat_parts(sub(sd, prefix), epoch=_epoch(obj))
        parts.dropped += [k for k in sd if not k.startswith(prefix)]
        parts.layout.update(prefix=prefix, pl_version=obj.get("pytorch-lightning_version"))
        if parts.dropped:
            parts.notes.append(f"dropped {len(parts.dropped)} keys of other Lightning modules")
        return parts

    def pack(self, backbone, heads, meta):
        layout = meta.get("layout") or {"kind": "model", "prefix": "model."}
        inner = join_flat(backbone, heads, layout)
        return {
            "state_dict": {layout.get("prefix", "") + k: v for k, v in inner.items()},
            "pytorch-lightning_version": layout.get("pl_version") or "2.0.0",
            "epoch": meta.get("epoch") or 0,
            "global_step": 0,
        }


class VICRegAdapter(Adapter):
    name, expected = "vicreg", ("model", "optimizer", "epoch")
    description = "VICReg full checkpoint {'model': {'module.backbone.*', 'module.projector.*'}, 'optimizer', 'epoch'}"

    def detect(self, obj):
        ok = isinstance(obj, dict) and "format" not in obj and _inner_kind(obj.get("model")) == "model"
        return 0.8 if ok else 0.0

    def split(self, obj):
        if _inner_kind(obj.get("model") if isinstance(obj, dict) else None) != "model":
            raise CheckpointError("not a VICReg full checkpoint: no 'model' dict with 'module.backbone.*' keys")
        return _flat_parts(obj["model"], "model", method="vicreg", epoch=_epoch(obj), optimizer=obj.get("optimizer"))

    def pack(self, backbone, heads, meta):
        out = {
            "model": join_flat(backbone, heads, {"kind": "model", "module_prefix": True}),
            "epoch": meta.get("epoch") or 0,
        }
        if meta.get("optimizer") is not None:
            out["optimizer"] = meta["optimizer"]
        return out


class SimSiamAdapter(Adapter):
    name, expected = "simsiam", ("state_dict", "optimizer", "epoch", "arch")
    description = (
        "SimSiam checkpoint {'state_dict': {'module.encoder.*', 'module.predictor.*'}, 'optimizer', 'epoch', 'arch'}"
    )

    def detect(self, obj):
        return 0.8 if isinstance(obj, dict) and _inner_kind(obj.get("state_dict")) == "simsiam" else 0.0

    def split(self, obj):
        if not isinstance(obj, dict) or _inner_kind(obj.get("state_dict")) != "simsiam":
            raise CheckpointError("not a SimSiam checkpoint: no 'state_dict' with 'module.encoder.*' keys")
        arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
        return _flat_parts(obj["state_dict"], "simsiam", arch=arch, epoch=_epoch(obj), optimizer=obj.get("optimizer"))

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


class SwAVAdapter(Adapter):
    name, expected = "swav", ("module.prototypes.weight", "module.projection_head.0.weight", "module.conv1.weight")
    description = "SwAV raw state dict {'module.<trunk>', 'module.projection_head.*', 'module.prototypes.weight'}"

    def detect(self, obj):
        if _inner_kind(obj) == "swav":
            return 0.8
        return 0.7 if isinstance(obj, dict) and _inner_kind(obj.get("state_dict")) == "swav" else 0.0

    def split(self, obj):
        wrapped = not is_tensor_dict(obj) and isinstance(obj, dict)
        sd = obj.get("state_dict") if wrapped else obj
        if _inner_kind(sd) != "swav":
            raise CheckpointError("not a SwAV checkpoint: no 'module.projection_head.*' / 'module.prototypes.*' keys")
        parts = _flat_parts(
            sd, "swav", epoch=_epoch(obj) if wrapped else None, optimizer=obj.get("optimizer") if wrapped else None
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


class BackboneAdapter(Adapter):
    """A raw backbone state dict; torchvision and timm differ only in the names they report."""

    name, expected = "torchvision", ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight")
    description = "torchvision ResNet state dict (conv1, bn1, layer1..4; VICReg resnet50.pth)"
    _signature = ("conv1.weight", "layer1.0.conv1.weight")

    def detect(self, obj):
        if _inner_kind(obj) != "backbone":
            return 0.0
        keys = set(sub(obj, "module.")) if all(k.startswith("module.") for k in obj) else set(obj)
        return 0.6 if any(k in keys for k in self._signature) else 0.0

    def split(self, obj):
        if _inner_kind(obj) is None:
            raise CheckpointError("not a raw state dict of tensors")
        parts = _flat_parts(obj, "backbone")
        parts.layout["kind"] = "backbone"
        return parts

    def pack(self, backbone, heads, meta):
        return join_flat(
            backbone, {}, {"kind": "backbone", "module_prefix": (meta.get("layout") or {}).get("module_prefix")}
        )


class TimmAdapter(BackboneAdapter):
    name, expected = "timm", ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.norm1.weight")
    description = "timm model state dict (patch_embed, blocks, ... ; head.* dropped)"
    _signature = (
        "patch_embed.proj.weight",
        "blocks.0.norm1.weight",
        "stem.0.weight",
        "stages.0.blocks.0.conv_dw.weight",
    )


class StateDictAdapter(Adapter):
    name, expected = "state_dict", ("backbone.conv1.weight", "projector.0.weight")
    description = "raw SSLModel state dict {'backbone.*', 'projector.*', ...}"

    def detect(self, obj):
        return 0.5 if _inner_kind(obj) == "model" else 0.0

    def split(self, obj):
        if _inner_kind(obj) != "model":
            raise CheckpointError("not a raw SSLModel state dict: no 'backbone.*' keys")
        return _flat_parts(obj, "model")

    def pack(self, backbone, heads, meta):
        return join_flat(
            backbone, heads, {"kind": "model", "module_prefix": (meta.get("layout") or {}).get("module_prefix")}
        )


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_MOCO_ARCHS = {"vit_small": "timm:vit_small_patch16_224:num_heads=12", "vit_base": "timm:vit_base_patch16_224"}


def _n_params(sd: dict) -> int:
    """Parameters in a ResNet / ViT state dict (every entry but BatchNorm's buffers)."""
    return sum(1 for k in sd if not k.endswith(_BUFFERS))


class MoCoV3Adapter(Adapter):
    """facebookresearch/moco-v3 ``main_moco.py``'s checkpoint: the DDP state dict of ``MoCo_ResNet``
    / ``MoCo_ViT`` (``base_encoder`` with the projector in ``fc`` / ``head``, ``momentum_encoder`` the
    same, ``predictor``), its LARS / AdamW state over ``model.parameters()`` (one group; the momentum
    encoder's positions never hold state) and the GradScaler's. The momentum encoder's positions
    are taken out of the optimiser's group (e2mc's optimiser holds the trainable parameters only, in
    the same order) and put back by ``pack``."""

    name, expected = "mocov3", ("state_dict", "optimizer", "scaler", "epoch", "arch")
    description = (
        "MoCo v3 checkpoint {'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*', "
        "'module.predictor.*'}, 'optimizer', 'scaler', 'epoch', 'arch'}"
    )

    @staticmethod
    def _inner(obj):
        sd = obj.get("state_dict") if isinstance(obj, dict) else None
        if not is_tensor_dict(sd):
            return None, False
        module = all(k.startswith("module.") for k in sd)
        sd = sub(sd, "module.") if module else sd
        tops = {k.split(".", 1)[0] for k in sd}
        return (sd, module) if {"base_encoder", "momentum_encoder", "predictor"} <= tops else (None, False)

    def detect(self, obj):
        return 0.85 if self._inner(obj)[0] is not None else 0.0

    def split(self, obj):
        sd, module = self._inner(obj)
        if sd is None:
            raise CheckpointError(
                "not a MoCo v3 checkpoint: no 'state_dict' with 'module.base_encoder.*', "
                "'module.momentum_encoder.*' and 'module.predictor.*' keys"
            )
        base, mom = sub(sd, "base_encoder."), sub(sd, "momentum_encoder.")
        head = "fc." if any(k.startswith("fc.") for k in base) else "head."
        arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
        if arch and arch.startswith("vit_conv"):
            raise CheckpointError(
                f"{arch}: MoCo v3's convolutional-stem ViTs have no timm twin; use vit_small/vit_base"
            )
        teacher = {f"backbone.{k}": v for k, v in mom.items() if not k.startswith(head)}
        teacher.update({f"projector.{k}": v for k, v in sub(mom, head).items()})
        heads = {"projector": sub(base, head), "predictor": sub(sd, "predictor."), "momentum_encoder": teacher}
        layout = {"kind": "mocov3", "module_prefix": module, "head": head, "arch": arch}
        extra: dict = {}  # kept as one JSON string: a run keeps its source layout's plain values only
        optimizer = obj.get("optimizer")
        n_base = _n_params(base)
        if isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list):
            groups = [dict(g) for g in optimizer["param_groups"]]
            teacher_ids = set(range(n_base, 2 * n_base))  # model.parameters(): base, momentum, predictor
            at = [(gi, g["params"].index(n_base)) for gi, g in enumerate(groups) if n_base in g.get("params", [])]
            if at and not teacher_ids & set(optimizer.get("state", {})):
                gi, pos = at[0]
                groups[gi]["params"] = [i for i in groups[gi]["params"] if i not in teacher_ids]
                extra["teacher_params"] = [gi, pos, n_base, n_base]  # group, position, first id, count
            optimizer = {"state": optimizer.get("state", {}), "param_groups": groups}
            extra["param_groups"] = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        if isinstance(obj.get("scaler"), dict):
            extra["scaler"] = dict(obj["scaler"])
        layout["mocov3"] = json.dumps(extra, default=str)
        return Parts(
            {k: v for k, v in base.items() if not k.startswith(head)},
            heads,
            method="mocov3",
            arch=_MOCO_ARCHS.get(arch, arch),
            epoch=_epoch(obj),
            optimizer=optimizer,
            dropped=[k for k in sd if k.split(".", 1)[0] not in ("base_encoder", "momentum_encoder", "predictor")],
            layout=layout,
        )

    def pack(self, backbone, heads, meta):
        layout = meta.get("layout") or {}
        extra = json.loads(layout.get("mocov3") or "{}")
        arch = layout.get("arch") or _official_moco_arch(meta.get("arch") or "")
        head = layout.get("head") or ("head." if arch.startswith("vit") else "fc.")
        teacher = heads.get("momentum_encoder", {})
        sd = {f"base_encoder.{k}": v for k, v in backbone.items()}
        sd.update({f"base_encoder.{head}{k}": v for k, v in heads.get("projector", {}).items()})
        sd.update({f"momentum_encoder.{k}": v for k, v in sub(teacher, "backbone.").items()})
        sd.update({f"momentum_encoder.{head}{k}": v for k, v in sub(teacher, "projector.").items()})
        sd.update({f"predictor.{k}": v for k, v in heads.get("predictor", {}).items()})
        if layout.get("module_prefix", True):
            sd = {f"module.{k}": v for k, v in sd.items()}
        n_base = _n_params(backbone) + _n_params(heads.get("projector", {}))
        n_all = 2 * n_base + _n_params(heads.get("predictor", {}))
        opt = meta.get("optimizer")
        if opt is not None:
            groups = [dict(g) for g in opt["param_groups"]]
            if extra.get("teacher_params"):  # the momentum encoder's positions, where the file had them
                gi, pos, first, count = extra["teacher_params"]
                ids = list(range(first, first + count))
                groups[gi]["params"] = groups[gi]["params"][:pos] + ids + groups[gi]["params"][pos:]
            opt = {"state": opt["state"], "param_groups": groups}
        else:  # no optimiser state: a fresh one with the file's (or main_moco.py's default) settings
            group = (extra.get("param_groups") or [None])[0] or (
                {"lr": 0.0, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False}
                if arch.startswith("vit")
                else {"lr": 0.0, "weight_decay": 1e-6, "momentum": 0.9, "trust_coefficient": 0.001}
            )
            opt = {"state": {}, "param_groups": [{**group, "params": list(range(n_all))}]}
        scaler = extra.get("scaler") or {
            "scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0
        }  # fmt: skip
        return {"epoch": meta.get("epoch") or 0, "arch": arch, "state_dict": sd, "optimizer": opt, "scaler": scaler}


def _official_moco_arch(arch: str) -> str:
    """main_moco.py's ``--arch`` for an e2mc arch (torchvision names as they are; the two timm ViTs)."""
    for official, ours in _MOCO_ARCHS.items():
        if arch == ours:
            return official
    return arch.split(":")[-1]


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        E2MCAdapter(),
        LightningAdapter(),
        VICRegAdapter(),
        SimSiamAdapter(),
        SwAVAdapter(),
        MoCoV3Adapter(),
        BackboneAdapter(),
        TimmAdapter(),
        StateDictAdapter(),
    )
}
