"""AVES (earthspecies/aves): a HuBERT saved as torchaudio's ``wav2vec2_model`` state dict plus a JSON
file of ``wav2vec2_model``'s arguments, read into transformers' ``HubertModel`` without torchaudio.

Files: ``<name>.pt`` (a plain state dict, read weights-only) and its config, found next to it as
``<name>.model_config.json`` (the release's naming: ``aves-base-bio.torchaudio.pt`` +
``aves-base-bio.torchaudio.model_config.json``) or ``<name>.json``.

The key scheme is torchaudio's own import of transformers' models read backwards
(``torchaudio/models/wav2vec2/utils/import_huggingface.py``, pytorch/audio 7ad6634: its
``_get_config`` for the arguments; ``_build`` loads ``feature_extractor`` <- ``feature_extractor``,
``encoder.feature_projection`` <- ``feature_projection``, ``encoder.transformer`` <- ``encoder``):

* ``feature_extractor.*`` -> ``feature_extractor.*``
* ``encoder.feature_projection.*`` -> ``feature_projection.*``
* ``encoder.transformer.*`` -> ``encoder.*``; the positional convolution's weight norm is
  ``weight_g``/``weight_v`` (``nn.utils.weight_norm``, torchaudio <= 2.1, AVES's files) or
  ``parametrizations.weight.original0/1`` (torchaudio's ``components.py`` today), written in the
  form the transformers model holds
* ``aux.*`` (a CTC head) is dropped; a ``hubert_pretrain_model`` file's ``wav2vec2.`` prefix is
  removed and its ``mask_generator.*`` / ``logit_generator.*`` dropped. As a backbone the
  HubertModel is built without SpecAugment and LayerDrop (``overrides``: ``models.audio``'s
  ``TRAINING_OVERRIDES``; the config's ``encoder_layer_drop`` is read, then overridden).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from e2mc.errors import CheckpointError

# torchaudio wav2vec2_model argument -> transformers HubertConfig field
CONFIG_KEYS = {
    "extractor_conv_bias": "conv_bias",
    "encoder_embed_dim": "hidden_size",
    "encoder_projection_dropout": "feat_proj_dropout",
    "encoder_pos_conv_kernel": "num_conv_pos_embeddings",
    "encoder_pos_conv_groups": "num_conv_pos_embedding_groups",
    "encoder_num_layers": "num_hidden_layers",
    "encoder_num_heads": "num_attention_heads",
    "encoder_attention_dropout": "attention_dropout",
    "encoder_ff_interm_features": "intermediate_size",
    "encoder_ff_interm_dropout": "activation_dropout",
    "encoder_dropout": "hidden_dropout",
    "encoder_layer_norm_first": "do_stable_layer_norm",
    "encoder_layer_drop": "layerdrop",
}
DEFAULT_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2  # torchaudio's None
PREFIXES = (("encoder.feature_projection.", "feature_projection."), ("encoder.transformer.", "encoder."))
DROPPED = ("aux.", "mask_generator.", "logit_generator.")
WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def hubert_config(args: dict, overrides: dict | None = None):
    """transformers ``HubertConfig`` of torchaudio ``wav2vec2_model`` arguments (AVES's JSON), then
    ``overrides`` (``models.audio.TRAINING_OVERRIDES`` when loaded as a backbone)."""
    from transformers import HubertConfig

    unknown = sorted(set(args) - set(CONFIG_KEYS) - {"extractor_mode", "extractor_conv_layer_config", "aux_num_out"})
    if unknown:
        raise CheckpointError(f"unknown torchaudio wav2vec2_model arguments {unknown}; is this an AVES config?")
    kw = {CONFIG_KEYS[k]: v for k, v in args.items() if k in CONFIG_KEYS}
    mode = args.get("extractor_mode", "group_norm")
    if mode not in ("group_norm", "layer_norm"):
        raise CheckpointError(f"extractor_mode {mode!r} is not group_norm or layer_norm")
    conv = args.get("extractor_conv_layer_config") or DEFAULT_CONV
    kw.update(feat_extract_norm=mode.split("_")[0], conv_dim=[int(c[0]) for c in conv])
    kw.update(conv_kernel=[int(c[1]) for c in conv], conv_stride=[int(c[2]) for c in conv])
    return HubertConfig(**{**kw, "feat_proj_layer_norm": True, **(overrides or {})})


def to_transformers(state: dict, target_keys) -> tuple[dict, list[str]]:
    """``(state dict in transformers' HubertModel keys, dropped keys)`` of a torchaudio-layout one;
    ``target_keys``: the HubertModel's keys (which weight-norm form it holds)."""
    target_keys = set(target_keys)
    out, dropped = {}, []
    for key, value in state.items():
        key = key[len("wav2vec2.") :] if key.startswith("wav2vec2.") else key
        if key.startswith(DROPPED):
            dropped.append(key)
            continue
        new = key
        for old, repl in PREFIXES:
            if key.startswith(old):
                new = repl + key[len(old) :]
        stem, _, last = new.rpartition(".")
        if last in WEIGHT_NORM and new not in target_keys:
            new = f"{stem}.{WEIGHT_NORM[last]}"
        elif ".parametrizations.weight.original" in new and new not in target_keys:
            new = new.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v"
            )
        out[new] = value
    return out, dropped


def config_path(weights: str | Path) -> Path:
    """The JSON config next to an AVES ``.pt`` file."""
    weights = Path(weights).expanduser()
    stem = weights.with_suffix("")
    for cand in (Path(f"{stem}.model_config.json"), Path(f"{stem}.json")):
        if cand.is_file():
            return cand
    raise CheckpointError(
        f"no AVES config next to {weights}: place its JSON (wav2vec2_model arguments) at {stem}.model_config.json"
    )


def load(path: str, weights: bool = True, overrides: dict | None = None):
    """``(HubertModel, source)`` of an AVES file: built from its config (with ``overrides``), its
    weights loaded (all or nothing) when ``weights``."""
    from transformers import HubertModel

    file = Path(path).expanduser()
    if weights and not file.is_file():
        raise CheckpointError(f"AVES weights not found: {file}; pass aves:<path to the .pt file>")
    try:
        args = json.loads(config_path(file).read_text())
    except ValueError as exc:
        raise CheckpointError(f"{config_path(file)} is not JSON ({exc}); re-download the AVES config") from None
    model = HubertModel(hubert_config(args, overrides))
    if not weights:
        return model, None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for garbage
        raise CheckpointError(
            f"cannot read {file} as a torchaudio state dict ({type(exc).__name__}); re-download it"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a state dict of tensors; AVES files are torchaudio state dicts")
    expected = model.state_dict()
    mapped, dropped = to_transformers(state, expected)
    missing = [k for k in expected if k not in mapped]
    extra = [k for k in mapped if k not in expected]
    bad = [k for k in mapped if k in expected and mapped[k].shape != expected[k].shape]
    if missing or extra or bad:
        raise CheckpointError(
            f"{file} does not fit its config: {len(missing)} missing {missing[:3]}, {len(extra)} unexpected "
            f"{extra[:3]}, {len(bad)} shape mismatches {bad[:3]}; check that the JSON belongs to this file"
        )
    model.load_state_dict(mapped, strict=True)
    return model, {"name": f"aves:{path}", "url": None, "cache_path": str(file), "dropped": dropped}
