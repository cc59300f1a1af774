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
torchvision    raw torchvision-named backbone (VICReg ``resnet50.pth``; ``fc.*`` dropped)
timm           raw timm backbone (``head.*`` dropped)
state_dict     raw SSLModel state dict (``backbone.*``, ``projector.*``, ...)
safetensors    a ``.safetensors`` file (any of the raw layouts; metadata arch/cifar_stem)
=============  =====================================================================================
"""

from __future__ import annotations

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
    method_state: Any = (
        None  # the method's own state the file holds (DINO's centre), as ``Method.save_state`` writes it
    )
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
        method = obj.get("method")
        key = _state_key(method)
        if key and obj.get(key) is not None:  # a run checkpoint's method state (DINO's centre)
            parts.method_state = obj[key]
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
            **({_state_key(meta.get("method")): meta["method_state"]} if meta.get("method_state") is not None else {}),
        }


def _state_key(method) -> str | None:
    from e2mc.methods import METHODS

    spec = METHODS.get(method) if isinstance(method, str) else None
    return spec.state_key if spec is not None else None


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


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        E2MCAdapter(),
        LightningAdapter(),
        VICRegAdapter(),
        SimSiamAdapter(),
        SwAVAdapter(),
        BackboneAdapter(),
        TimmAdapter(),
        StateDictAdapter(),
    )
}


# -- DINO (facebookresearch/dino main_dino.py, commit 7c446df) ------------------------------------
_DINO_SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}


def _unwrap(sd: dict) -> tuple[dict, bool]:
    module = bool(sd) and all(k.startswith("module.") for k in sd)
    return (sub(sd, "module.") if module else dict(sd)), module


def _dino_args(meta: dict):
    """The ``args`` Namespace an exported file carries (main_dino.py saves its argparse Namespace;
    its resume path does not read it): the fields that describe the network."""
    import argparse

    arch, sizes = str(meta.get("arch") or ""), meta.get("head_sizes") or {}
    name, patch = arch.split(":")[-1], 16
    if arch.startswith("timm:vit_"):
        parts = name.split("_")  # vit_small_patch16_224 -> vit_small, 16
        name = "_".join(parts[:2])
        patch = int(next((p[5:] for p in parts if p.startswith("patch")), 16))
    return argparse.Namespace(
        arch=name,
        patch_size=patch,
        out_dim=int(sizes.get("out", 65536)),
        norm_last_layer=True,
        use_bn_in_head=bool(sizes.get("use_bn", 0)),
        epochs=int(meta.get("epoch") or 0),
    )


class DINOAdapter(Adapter):
    """main_dino.py's ``checkpoint.pth``: ``{"student": DDP state dict (module.backbone.*,
    module.head.mlp.*, module.head.last_layer.weight_g/_v), "teacher": the same without ``module.``
    (ViTs) or with it (networks with BatchNorm: main_dino.py wraps that teacher in DDP),
    "optimizer", "epoch", "args" (argparse.Namespace), "dino_loss": {"center": (1, K)},
    "fp16_scaler"}``. The student's backbone and head are the model's, the teacher its ``teacher``
    slot, the centre the method state (a file without ``dino_loss``: re-estimated by a
    continuation). Backbone-only releases (``*_pretrain.pth``) are the ``timm`` / ``torchvision``
    layouts."""

    name, expected = "dino", ("student", "teacher", "optimizer", "epoch", "args", "dino_loss")
    description = "DINO checkpoint {'student': {'module.backbone.*', 'module.head.*'}, 'teacher', 'dino_loss', ...}"

    def detect(self, obj):
        ok = isinstance(obj, dict) and is_tensor_dict(obj.get("student")) and "format" not in obj
        return (
            0.9
            if ok and any(k.split(".")[:2] == ["module", "head"] or k.startswith("head.") for k in obj["student"])
            else 0.0
        )

    def split(self, obj):
        if not isinstance(obj, dict) or not is_tensor_dict(obj.get("student")):
            raise CheckpointError("not a DINO checkpoint: no 'student' state dict (main_dino.py's checkpoint.pth)")
        student, s_mod = _unwrap(obj["student"])
        teacher, t_mod = _unwrap(obj["teacher"]) if is_tensor_dict(obj.get("teacher")) else ({}, False)
        backbone, head = sub(student, "backbone."), sub(student, "head.")
        if not backbone or not head:
            raise CheckpointError(
                "DINO checkpoint whose student lacks 'backbone.*' or 'head.*' keys: not main_dino.py's"
            )
        heads = {"head": head}
        kept = {k: v for k, v in teacher.items() if k.startswith(("backbone.", "head."))}
        if kept:
            heads["teacher"] = kept
        dropped = [f"student.{k}" for k in student if not k.startswith(("backbone.", "head."))]
        dropped += [f"teacher.{k}" for k in teacher if k not in kept]
        parts = Parts(
            backbone, heads, method="dino", epoch=_epoch(obj), optimizer=obj.get("optimizer"), dropped=dropped
        )
        center = obj.get("dino_loss", {}).get("center") if isinstance(obj.get("dino_loss"), dict) else None
        if center is not None:
            parts.method_state = {"center": center, "known": True}
        else:
            parts.notes.append(
                "no dino_loss centre in the file: a continuation re-estimates it (method.center_batches)"
            )
        if getattr(obj.get("args"), "norm_last_layer", True) is False:  # e.g. the ViT-S/16 recipe
            parts.notes.append(
                "trained with main_dino.py's norm_last_layer=False (last_layer.weight_g learned): continue with "
                "--set method.norm_last_layer=false to keep training it"
            )
        parts.layout = {
            "kind": "dino",
            "student_module": s_mod,
            "teacher_module": t_mod,
            "fp16_scaler": "fp16_scaler" in obj,
            "dino_loss": center is not None,
        }
        return parts

    def pack(self, backbone, heads, meta):
        layout, arch = meta.get("layout") or {}, str(meta.get("arch") or "")
        t_mod = layout.get("teacher_module", not arch.startswith("timm:"))  # a BN network's teacher is DDP-wrapped
        s_pre = "module." if layout.get("student_module", True) else ""
        student = {f"{s_pre}backbone.{k}": v for k, v in backbone.items()}
        student.update({f"{s_pre}head.{k}": v for k, v in heads.get("head", {}).items()})
        teacher = heads.get("teacher") or {
            **{f"backbone.{k}": v for k, v in backbone.items()},
            **{f"head.{k}": v for k, v in heads.get("head", {}).items()},
        }
        out: dict = {"student": student, "teacher": {("module." if t_mod else "") + k: v for k, v in teacher.items()}}
        if meta.get("optimizer") is not None:
            out["optimizer"] = meta["optimizer"]
        out["epoch"] = meta.get("epoch") or 0
        out["args"] = _dino_args(meta)
        state = meta.get("method_state")
        if isinstance(state, dict) and state.get("center") is not None:
            out["dino_loss"] = {"center": state["center"]}
        if layout.get("fp16_scaler", True):  # main_dino.py's default --use_fp16 true
            out["fp16_scaler"] = {**_DINO_SCALER, "_growth_tracker": 0}
        return out


ADAPTERS[DINOAdapter.name] = DINOAdapter()
