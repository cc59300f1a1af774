"""Checkpoint adapters: one per published layout, in one registry (:data:`ADAPTERS`).

Each adapter (:class:`e2mc.methods.adapter.Adapter`) recognises a loaded checkpoint object
(``detect(obj) -> score in [0, 1]``), splits it into backbone + heads in e2mc naming
(``split(obj) -> Parts``) and writes a model back in its layout (``pack(backbone, heads, meta)
-> obj``). Building the model and checking keys/shapes is shared:
:func:`e2mc.models.checkpoints.model_from_parts` and :func:`e2mc.models.export.export_model` use
the registry; adapters import neither (no import circle).

The generic layouts live here; each method's official layouts are declared in its method file
(``Method.adapters``: VICReg's full checkpoint, SimSiam's ``checkpoint_*.pth.tar``, SwAV's raw
and wrapped state dicts) and take their place in ``ADAPTERS`` in registry order, between
``lightning`` and ``torchvision``.

=============  =====================================================================================
format         layout
=============  =====================================================================================
e2mc           ``{"format": "e2mc", "method", "arch", "cifar_stem", "head_sizes", "model", ...}``
lightning      ``{"state_dict": {<prefix>...}, "pytorch-lightning_version", "epoch", ...}``
<method's>     each registered method's official layouts (``e2mc.methods.<name>``)
torchvision    raw torchvision-named backbone (VICReg ``resnet50.pth``; ``fc.*`` dropped)
timm           raw timm backbone (``head.*`` dropped)
transformers   export only: an audio encoder's ``save_pretrained`` folder of its own class
state_dict     raw SSLModel state dict (``backbone.*``, ``projector.*``, ...)
safetensors    a ``.safetensors`` file (any of the raw layouts; metadata arch/cifar_stem)
=============  =====================================================================================
"""

from __future__ import annotations

import logging
from collections import Counter

from e2mc.errors import CheckpointError
from e2mc.methods import METHODS
from e2mc.methods.adapter import Adapter, epoch_of, flat_parts, inner_kind
from e2mc.methods.layout import flat_kinds, is_tensor_dict, join_flat, sub

_log = logging.getLogger(__name__)

_GENERIC_TOPS = ("module", "conv1", "patch_embed")  # where Lightning's descent stops, besides the kinds' tops


class E2MCAdapter(Adapter):
    name, expected = "e2mc", ("format", "method", "arch", "cifar_stem", "head_sizes", "model")
    names_arch = holds_audio = True
    description = "e2mc run checkpoint {'format': 'e2mc', 'model': SSLModel state dict, ...}"

    def detect(self, obj):
        return 1.0 if isinstance(obj, dict) and obj.get("format") == "e2mc" else 0.0

    def split(self, obj):
        if not is_tensor_dict(obj.get("model")):
            raise CheckpointError("e2mc checkpoint without a 'model' state dict")
        if obj.get("encoder") is not None:  # an audio encoder's config: built from it, not from its source
            from e2mc.models.audio import remember

            remember(obj.get("arch"), obj["encoder"])
        parts = flat_parts(
            obj["model"],
            "model",
            method=obj.get("method"),
            arch=obj.get("arch"),
            cifar_stem=obj.get("cifar_stem"),
            head_sizes=obj.get("head_sizes"),
            epoch=epoch_of(obj),
            optimizer=obj.get("optimizer"),
        )
        key = _state_key(obj.get("method"))
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
        from e2mc.models.audio import encoder_item

        written_by = (meta.get("layout") or {}).get("e2mc_version")  # an e2mc file exported again
        return {
            "e2mc_version": written_by or __version__,
            **({"exported_by": __version__} if written_by and written_by != __version__ else {}),
            "format": "e2mc",
            "method": meta.get("method"),
            "arch": meta.get("arch"),
            "cifar_stem": bool(meta.get("cifar_stem")),
            "head_sizes": meta.get("head_sizes") or {},
            **encoder_item(
                meta.get("encoder"), meta.get("arch")
            ),  # an audio encoder's config (models.audio.encoder_record)
            "model": join_flat(backbone, heads, {"kind": "model"}),
            "epoch": meta.get("epoch"),
            "source_format": meta.get("source_format"),
            **({_state_key(meta.get("method")): meta["method_state"]} if meta.get("method_state") is not None else {}),
        }


def _state_key(method) -> str | None:
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
        known = set(_GENERIC_TOPS).union(*(k.tops for k in flat_kinds().values()))
        prefix = ""  # descend into the main submodule ("model.", "net.") down to something known
        while True:
            inner = sub(sd, prefix)
            counts = Counter(k.split(".", 1)[0] for k in inner if "." in k)
            if not counts or set(counts) & known:
                break
            top, n = counts.most_common(1)[0]
            if n * 2 <= len(inner):
                break
            prefix += top + "."
        parts = flat_parts(sub(sd, prefix), epoch=epoch_of(obj))
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


class BackboneAdapter(Adapter):
    """A raw backbone state dict; torchvision and timm differ only in the names they report."""

    name, expected = "torchvision", ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight")
    description = "torchvision ResNet state dict (conv1, bn1, layer1..4; VICReg resnet50.pth)"
    _signature = ("conv1.weight", "layer1.0.conv1.weight")

    def detect(self, obj):
        if inner_kind(obj) != "backbone":
            return 0.0
        keys = set(sub(obj, "module.")) if all(k.startswith("module.") for k in obj) else set(obj)
        return 0.6 if any(k in keys for k in self._signature) else 0.0

    def split(self, obj):
        if inner_kind(obj) is None:
            raise CheckpointError("not a raw state dict of tensors")
        parts = flat_parts(obj, "backbone")
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
    holds_audio = True
    description = "raw SSLModel state dict {'backbone.*', 'projector.*', ...}"

    def detect(self, obj):
        return 0.5 if inner_kind(obj) == "model" else 0.0

    def split(self, obj):
        if inner_kind(obj) != "model":
            raise CheckpointError("not a raw SSLModel state dict: no 'backbone.*' keys")
        return flat_parts(obj, "model")

    def pack(self, backbone, heads, meta):
        return join_flat(
            backbone, heads, {"kind": "model", "module_prefix": (meta.get("layout") or {}).get("module_prefix")}
        )


class TransformersFolder(Adapter):
    """``export --to transformers``: an audio encoder (``hf:``, ``aves:``, ``fairseq:``) as the
    transformers ``save_pretrained`` folder of its own class (``Wav2Vec2Model``, ``HubertModel``,
    ``WavLMModel``, ``Data2VecAudioModel``), which ``AutoModel.from_pretrained`` and e2mc load.
    config.json is the source's as published (SpecAugment and LayerDrop as there, not e2mc's
    training overrides) with ``masked_spec_embed`` from the run's own mask embedding (the
    wav2vec 2.0 / HuBERT objectives train one) or else the source file's; with neither, SpecAugment
    is written off and a warning says so. Not a file layout: loading detects nothing here."""

    name, holds_audio = "transformers", True
    expected = ()  # export only: no file is compared with it
    description = "transformers save_pretrained folder of an audio encoder (export only; load it by its path)"

    def detect(self, obj):
        return 0.0

    def split(self, obj):
        raise CheckpointError("a transformers folder is loaded by its path (or hf:<folder>), not as one file")

    def pack(self, backbone, heads, meta):
        from e2mc.models import audio

        encoder = meta.get("encoder")
        if not isinstance(encoder, audio.AudioEncoder) or not all(k.startswith("model.") for k in backbone):
            raise CheckpointError(
                f"the transformers layout writes audio encoders (hf:, aves:, fairseq:), not {meta.get('arch')}; "
                "export --to torchvision, timm or safetensors for the backbone alone"
            )
        from e2mc.methods.hfolder import preprocessor_json, published_config

        config = published_config(encoder)
        cls = audio.hf_class(config, str(meta.get("arch")))
        state = {k[len("model.") :]: v for k, v in backbone.items()}
        if (
            float(getattr(config, "mask_time_prob", 0) or 0) > 0
            or float(getattr(config, "mask_feature_prob", 0) or 0) > 0
        ):
            mask = _run_mask_embedding(heads)
            if mask is None:
                mask = encoder.source_mask(str(meta["arch"]))
            if mask is None:
                config.update({"mask_time_prob": 0.0, "mask_feature_prob": 0.0})
                _log.warning(
                    "neither the run nor %s holds a mask embedding (masked_spec_embed): the folder's config has "
                    "SpecAugment off (mask_time_prob 0); set it in config.json to fine-tune with it (the embedding "
                    "then starts at random)",
                    meta["arch"],
                )
            else:
                state["masked_spec_embed"] = mask
        config.architectures = [cls.__name__]
        import torch

        with torch.device("meta"):  # the class built from this config takes exactly these tensors
            want = cls(config).state_dict()
        missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
        bad = [k for k in want if k in state and tuple(want[k].shape) != tuple(state[k].shape)]
        if missing or extra or bad:
            raise CheckpointError(
                f"the encoder's weights do not fit a {cls.__name__} of its config: {len(missing)} missing "
                f"{missing[:2]}, {len(extra)} unexpected {extra[:2]}, {len(bad)} of another shape {bad[:2]}; "
                "export --to e2mc or safetensors instead"
            )
        return {"config": config.to_json_string(), "state_dict": state, "preprocessor": preprocessor_json(meta)}

    def save(self, obj, path, error):
        from e2mc.methods.hfolder import write_folder

        return write_folder(obj, path, error, self.name)


def _run_mask_embedding(heads: dict):
    """The mask embedding a run's objective trained (wav2vec 2.0's ``mask_embed``, HuBERT's
    ``mask_emb``), or None."""
    if "weight" in heads.get("mask_embed", {}):
        return heads["mask_embed"]["weight"]
    return next((v for h in heads.values() for k, v in h.items() if k == "mask_emb"), None)


def _registry(*adapters: Adapter) -> dict[str, Adapter]:
    out: dict[str, Adapter] = {}
    for a in adapters:
        if not a.name or a.name in out or a.name == "safetensors":
            raise ValueError(f"adapter name {a.name!r} of {type(a).__name__} is empty or already taken")
        out[a.name] = a
    return out


ADAPTERS: dict[str, Adapter] = _registry(
    E2MCAdapter(),
    LightningAdapter(),
    *(a for m in METHODS.values() for a in m.adapters),  # each method's official layouts, in registry order
    BackboneAdapter(),
    TimmAdapter(),
    TransformersFolder(),
    StateDictAdapter(),
)
