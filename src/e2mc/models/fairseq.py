"""fairseq wav2vec 2.0 and HuBERT checkpoints (``wav2vec_small.pt``, ``libri960_big.pt``,
``hubert_base_ls960.pt``, ...) read into transformers' ``Wav2Vec2Model`` / ``HubertModel`` without
fairseq or omegaconf.

The file is what fairseq's ``save_checkpoint`` writes (``Trainer.state_dict`` today, the older
``checkpoint_utils.save_state``): ``{"args", "cfg", "model", "criterion", "optimizer_history",
"task_state", "extra_state", "last_optimizer_state"}``. The configuration is read from

* ``args``: an ``argparse.Namespace`` (files before fairseq's Hydra migration, e.g. the released
  wav2vec 2.0 models), ``arch`` naming the model, its fields the model's options;
* ``cfg``: a pickled omegaconf ``DictConfig`` (late 2020 to early 2021, e.g. HuBERT's releases;
  read as data by :mod:`e2mc.models.omegapickle`) or a plain dict (fairseq since 2021-03), with
  ``cfg["model"]`` (``_name``: ``wav2vec2`` / ``hubert``) and ``cfg["task"]`` (``normalize``,
  ``sample_rate``).

A CTC fine-tuning (``wav2vec_ctc`` / ``hubert_ctc``) is read as its encoder: the pre-training
config in ``w2v_args``, the weights under ``w2v_encoder.w2v_model.``; the CTC projection
``w2v_encoder.proj`` is dropped. Everything is loaded with ``torch.load(weights_only=True)`` and
an allow-list of data-only globals (:mod:`e2mc.models.safepickle`'s table plus omegaconf's);
anything else is refused, naming the global.

Keys (fairseq -> transformers): ``feature_extractor.conv_layers.i.0`` -> ``.i.conv``,
``.i.2`` (group norm, layer 0) / ``.i.2.1`` (layer norm) -> ``.i.layer_norm``; ``layer_norm`` ->
``feature_projection.layer_norm``; ``post_extract_proj`` -> ``feature_projection.projection``
(absent when the CNN width equals the encoder's: an identity projection is written);
``encoder.pos_conv.0`` -> ``encoder.pos_conv_embed.conv`` (weight norm as ``weight_g``/``weight_v``
or ``parametrizations.weight.original0/1``, written in the model's form); per layer
``self_attn.{q,k,v,out}_proj`` -> ``attention.*``, ``self_attn_layer_norm`` -> ``layer_norm``,
``fc1``/``fc2`` -> ``feed_forward.intermediate_dense``/``output_dense``. The pre-training heads
(``quantizer``, ``project_q``, ``final_proj``, ``label_embs_concat``, ``target_glu``,
``mask_emb``) are not part of the encoder: they are dropped and listed.
"""

from __future__ import annotations

import ast
import os
import re
import zipfile
from pathlib import Path

import torch

from e2mc.errors import CheckpointError
from e2mc.models import omegapickle, safepickle

FAMILIES = {"wav2vec2": "Wav2Vec2", "hubert": "Hubert"}  # fairseq model name -> transformers prefix
FINE_TUNED = {"wav2vec_ctc": "wav2vec2", "hubert_ctc": "hubert"}
ENCODER_PREFIX = "w2v_encoder.w2v_model."
HEADS = ("quantizer.", "project_q.", "final_proj.", "label_embs_concat", "target_glu.", "mask_emb", "w2v_encoder.proj.")
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_accurate": "gelu_new", "tanh": "tanh", "swish": "swish"}
DEFAULT_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"
SIGNATURE = (b"optimizer_history", b"model")  # strings every fairseq checkpoint's pickle holds
LAYER_KEYS = {
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def looks_like(path) -> bool:
    """Whether ``path`` is a file whose first 4 MiB (a torch zip's ``data.pkl`` comes first, a
    legacy file's pickle before its storages) name ``optimizer_history``, ``model`` and ``args``
    or ``cfg``: a fairseq checkpoint (checked for real by :func:`read`)."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as fh:
            head = fh.read(4 << 20)
    except OSError:
        return False
    return all(s in head for s in SIGNATURE) and (b"args" in head or b"cfg" in head)


def read(path) -> dict:
    """The checkpoint dict, read weights-only with the data-only globals allowed (tensors memory
    mapped for a zip file); CheckpointError naming a refused global, or when it is not fairseq's."""
    entries = [(obj, q) for q, obj in {**safepickle.INERT, **omegapickle.GLOBALS}.items()]
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(entries):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - torch raises many types; its text suggests unsafe loading
        found = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)|got <class '([\w.]+)'>", str(exc))
        what = next((g for g in found.groups() if g), "?") if found else None
        if what:
            raise CheckpointError(
                f"{path} names the Python global {what}, which is not known to be data-only; e2mc will not "
                "execute it. Re-save the model's state dict and config from fairseq, or report the global"
            ) from None
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}); re-download it"
        ) from None
    if not isinstance(state, dict) or "model" not in state or not ({"args", "cfg"} & set(state)):
        keys = list(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a fairseq checkpoint (top-level keys {keys}; fairseq's have model and args "
            "or cfg); pass it without fairseq: to load it by its own layout"
        )
    return state


def model_config(state: dict, where: str = "the file") -> tuple[str, dict, dict, str]:
    """``(family, model options, task options, weight prefix)`` of a fairseq checkpoint dict:
    ``family`` ``wav2vec2`` / ``hubert``; a CTC fine-tuning gives its encoder's."""
    cfg = omegapickle.plain(state.get("cfg"))
    args = omegapickle.plain(state.get("args"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model, task = cfg["model"], cfg.get("task") or {}
    elif isinstance(args, dict):
        model, task = args, args
    else:
        raise CheckpointError(f"{where} holds neither a cfg with a model section nor args; is it a fairseq checkpoint?")
    name = _name(model)
    prefix = ""
    if name in FINE_TUNED:
        inner = omegapickle.plain(model.get("w2v_args"))
        if not isinstance(inner, dict):
            raise CheckpointError(
                f"{where} is a fine-tuned {name} model without its pre-training config (w2v_args); pass the "
                "pre-training checkpoint it was fine-tuned from"
            )
        model, task = (
            (inner["model"], inner.get("task") or {}) if isinstance(inner.get("model"), dict) else (inner,) * 2
        )
        name, prefix = _name(model) or FINE_TUNED[name], ENCODER_PREFIX
    if name not in FAMILIES:
        raise CheckpointError(
            f"{where} is a fairseq {name!r} model; e2mc reads fairseq wav2vec2 and hubert pre-training "
            "checkpoints and their CTC fine-tunings (wav2vec_ctc, hubert_ctc)"
        )
    return name, model, task, prefix


def _name(model: dict):
    """The model's registered name: ``arch`` of an argparse config, ``_name`` of a Hydra one."""
    return model.get("arch") or model.get("_name")


def conv_layers(spec) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string (a Python expression of lists of (dim, kernel,
    stride) tuples, ``+`` and ``* int``) evaluated as data, never by ``eval``."""

    def ev(node):
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts] if isinstance(node, ast.List) else tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(ast.dump(node)[:60])

    try:
        layers = ev(ast.parse(str(spec), mode="eval").body)
        layers = [tuple(int(v) for v in t) for t in layers]
        if not layers or any(len(t) != 3 for t in layers):
            raise ValueError("not (dim, kernel, stride) triples")
    except (SyntaxError, ValueError, TypeError) as exc:
        raise CheckpointError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride): {exc}") from None
    return layers


def _unsupported(model: dict) -> str | None:
    if model.get("layer_type", "transformer") != "transformer":
        return f"layer_type {model['layer_type']!r} (transformers' models are plain transformers)"
    if int(model.get("pos_conv_depth", 1) or 1) > 1:
        return f"pos_conv_depth {model['pos_conv_depth']} (transformers' models have one positional convolution)"
    if model.get("conv_pos_batch_norm"):
        return "conv_pos_batch_norm"
    if model.get("extractor_mode", "default") not in ("default", "layer_norm"):
        return f"extractor_mode {model['extractor_mode']!r}"
    if model.get("activation_fn", "gelu") not in ACTIVATIONS:
        return f"activation_fn {model['activation_fn']!r}"
    return None


def hf_config(family: str, model: dict, overrides: dict | None = None):
    """transformers ``Wav2Vec2Config`` / ``HubertConfig`` of fairseq model options (fairseq's
    defaults for absent ones), then ``overrides`` (``models.audio.TRAINING_OVERRIDES``)."""
    import transformers

    bad = _unsupported(model)
    if bad:
        raise CheckpointError(
            f"this fairseq {family} model uses {bad}, which e2mc cannot map to transformers' {FAMILIES[family]}Model; "
            "convert it with transformers' own conversion script and pass the save_pretrained folder"
        )
    conv = conv_layers(model.get("conv_feature_layers") or DEFAULT_CONV)
    g = model.get
    kw = dict(
        feat_extract_norm="layer" if g("extractor_mode", "default") == "layer_norm" else "group",
        feat_extract_activation="gelu",
        conv_dim=[c[0] for c in conv],
        conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv],
        conv_bias=bool(g("conv_bias", False)),
        hidden_size=int(g("encoder_embed_dim", 768)),
        num_hidden_layers=int(g("encoder_layers", 12)),
        num_attention_heads=int(g("encoder_attention_heads", 12)),
        intermediate_size=int(g("encoder_ffn_embed_dim", 3072)),
        hidden_act=ACTIVATIONS[g("activation_fn", "gelu")],
        hidden_dropout=float(g("dropout", 0.1)),
        attention_dropout=float(g("attention_dropout", 0.1)),
        activation_dropout=float(g("activation_dropout", 0.0)),
        feat_proj_dropout=float(g("dropout_input", 0.0)),
        layerdrop=float(g("encoder_layerdrop", 0.0)),
        do_stable_layer_norm=bool(g("layer_norm_first", False)),
        num_conv_pos_embeddings=int(g("conv_pos", 128)),
        num_conv_pos_embedding_groups=int(g("conv_pos_groups", 16)),
        layer_norm_eps=1e-5,
    )
    if family == "wav2vec2":  # what a Wav2Vec2ForPreTraining of this file would need
        final = int(g("final_dim", 0) or 0) or kw["hidden_size"]
        kw.update(
            num_codevectors_per_group=int(g("latent_vars", 320)),
            num_codevector_groups=int(g("latent_groups", 2)),
            codevector_dim=int(g("latent_dim", 0) or 0) or final,
            proj_codevector_dim=final,
            num_negatives=int(g("num_negatives", 100)),
        )
    else:
        kw.update(feat_proj_layer_norm=True)
    cls = getattr(transformers, f"{FAMILIES[family]}Config")
    return cls(**{**kw, **(overrides or {})})


def to_transformers(state: dict, target_keys, prefix: str = "") -> tuple[dict, list[str], list[str]]:
    """``(state dict in transformers' keys, dropped keys, unknown keys)`` of a fairseq model state
    dict; ``target_keys``: the transformers model's (which weight-norm form it holds);
    ``prefix``: a fine-tuning's ``w2v_encoder.w2v_model.``."""
    target_keys = set(target_keys)
    out, dropped, unknown = {}, [], []
    for key, value in state.items():
        if prefix and not key.startswith(prefix):
            (dropped if key.startswith(HEADS) else unknown).append(key)
            continue
        k = key[len(prefix) :]
        new = _map_key(k)
        if new is None:
            (dropped if k.startswith(HEADS) else unknown).append(key)
            continue
        stem, _, last = new.rpartition(".")
        if last in WEIGHT_NORM and new not in target_keys:
            new = f"{stem}.{WEIGHT_NORM[last]}"
        elif ".parametrizations.weight.original" in new and new not in target_keys:
            new = new.replace("parametrizations.weight.original0", "weight_g")
            new = new.replace("parametrizations.weight.original1", "weight_v")
        out[new] = value
    return out, dropped, unknown


def _map_key(k: str) -> str | None:
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)\.(weight|bias)", k)
    if m:
        part = "conv" if m[2] == "0" else "layer_norm"
        return f"feature_extractor.conv_layers.{m[1]}.{part}.{m[3]}"
    for old, new in (
        ("layer_norm.", "feature_projection.layer_norm."),
        ("post_extract_proj.", "feature_projection.projection."),
    ):
        if k.startswith(old):
            return new + k[len(old) :]
    if k.startswith("encoder.pos_conv.0."):
        return "encoder.pos_conv_embed.conv." + k[len("encoder.pos_conv.0.") :]
    if k.startswith("encoder.layer_norm."):
        return k
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(\w+(?:\.\w+)?)\.(weight|bias)", k)
    if m and m[2] in LAYER_KEYS:
        return f"encoder.layers.{m[1]}.{LAYER_KEYS[m[2]]}.{m[3]}"
    return None


def _what(state: dict, family: str, prefix: str, target: str) -> str:
    """The report's first note: what the file is and where its config was read from."""
    raw = state.get("cfg")
    cfg = omegapickle.plain(raw)
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        how = "cfg, a pickled omegaconf DictConfig read as data" if isinstance(raw, omegapickle.Container) else "cfg"
    else:
        how = "args (argparse.Namespace)"
    kind = "CTC fine-tuning, its encoder" if prefix else "pre-training"
    return f"fairseq {family} ({kind}; config from {how}) -> transformers {target}"


def load(path: str, weights: bool = True, overrides: dict | None = None):
    """``(model, info)`` of a fairseq checkpoint: the transformers model built from its config
    (with ``overrides``), its encoder weights loaded (all or nothing) when ``weights``; ``info``:
    ``config`` (the transformers config without ``overrides``), ``family``, ``sample_rate``,
    ``normalize`` (the task's), ``source`` (``name``, ``cache_path``,
    ``dropped``, ``notes``: what was loaded, dropped and made up)."""
    import transformers

    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"fairseq checkpoint not found: {file}; pass fairseq:<path to the .pt file>")
    state = read(str(file))
    family, options, task, prefix = model_config(state, str(file))
    config = hf_config(family, options, overrides)
    model = getattr(transformers, f"{FAMILIES[family]}Model")(config)
    info = {
        "config": hf_config(family, options),  # as the file has it (without ``overrides``)
        "family": family,
        "sample_rate": int(task.get("sample_rate", 16000) or 16000),
        "normalize": bool(task.get("normalize", False)),
        "source": {"name": f"fairseq:{path}", "url": None, "cache_path": str(file)},
    }
    if not weights:
        return model, info
    sd = state["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{file}: its 'model' entry is not a state dict of tensors; re-download the checkpoint")
    expected = model.state_dict()
    mapped, dropped, unknown = to_transformers(sd, expected, prefix)
    notes = [_what(state, family, prefix, type(model).__name__)]
    if float(options.get("feature_grad_mult", 1.0) or 0.0) != 1.0:
        notes.append(
            f"the pre-training scaled the CNN's gradient by feature_grad_mult={options['feature_grad_mult']}; "
            "e2mc trains it with its full gradient"
        )
    proj = "feature_projection.projection."
    w = expected.get(f"{proj}weight")
    if f"{proj}weight" not in mapped and w is not None and w.shape[0] == w.shape[1]:  # CNN width = encoder's
        mapped[f"{proj}weight"], mapped[f"{proj}bias"] = torch.eye(*w.shape), torch.zeros(w.shape[0])
        notes.append("no post_extract_proj in the file (CNN width = encoder width): an identity projection")
    missing = [k for k in expected if k not in mapped]
    bad = [k for k in mapped if k in expected and mapped[k].shape != expected[k].shape]
    extra = [k for k in mapped if k not in expected] + unknown
    if missing or extra or bad:
        raise CheckpointError(
            f"{file} does not fit its own config: {len(missing)} missing {missing[:3]}, {len(extra)} unexpected "
            f"{extra[:3]}, {len(bad)} shape mismatches {bad[:3]}; the file may be cut short or edited"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()}, strict=True)
    bare = [k[len(prefix) :] if k.startswith(prefix) else k for k in dropped]
    heads = sorted({next((h.rstrip(".") for h in HEADS if k.startswith(h)), k) for k in bare})
    if heads:
        notes.append(f"dropped the pre-training/fine-tuning heads {', '.join(heads)} (not part of the encoder)")
    if state.get("last_optimizer_state") is not None:
        notes.append("fairseq's optimizer state (last_optimizer_state) is not carried over")
    info["source"].update(dropped=dropped, notes=notes)
    return model, info
