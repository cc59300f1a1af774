"""fairseq's wav2vec 2.0 / HuBERT checkpoint save path, reproduced without fairseq or omegaconf.

``write(folder, case)`` builds the tiny transformers model of ``CASES[case]`` (the reference:
what e2mc must load back), renames its weights to fairseq's module names in the order fairseq's
``state_dict`` lists them, adds the pre-training heads fairseq's model holds (wav2vec 2.0:
``mask_emb``, ``quantizer.vars``/``weight_proj``, ``project_q``, ``final_proj``; HuBERT:
``mask_emb``, ``label_embs_concat``, ``final_proj``) and writes ``<case>.pt`` as fairseq's
``save_checkpoint`` does, in one of its three historical forms:

* ``args``: ``checkpoint_utils.save_state`` before the Hydra migration (a48f2356, the wav2vec 2.0
  releases' era): ``{"args": Namespace, "model", "optimizer_history", "extra_state",
  "last_optimizer_state"}``;
* ``dictcfg``: ``save_state`` from 3b27ed79 to f6d60e2f^ (HuBERT's era): ``{"cfg": DictConfig,
  "args": None, "model", "optimizer_history", "extra_state", "task_state",
  "last_optimizer_state"}``, the ``DictConfig`` pickled as omegaconf 2.0 pickles it (the classes
  ``omegaconf.dictconfig.DictConfig``, ``listconfig.ListConfig``, ``nodes.AnyNode``,
  ``base.ContainerMetadata``/``Metadata``, ``typing.Any``, a ``defaultdict(dict)`` resolver cache,
  ``int`` as ``__builtin__.long``; each object's ``__dict__`` as its state, children pointing at
  their parent): written here with stand-in classes carrying those global names;
* ``cfg``: ``Trainer.state_dict`` + ``save_checkpoint`` today: ``{"args": None, "cfg": dict,
  "model", "criterion": None, "optimizer_history", "task_state", "extra_state",
  "last_optimizer_state"}``.

``optimizer_history`` holds ``{criterion_name, optimizer_name ("FairseqAdam"),
lr_scheduler_state {"best": None} (polynomial_decay, the releases' schedule), num_updates}``;
``extra_state`` the trainer's ``metrics`` (``OrderedDict(default=[])``) and
``previous_training_time`` and ``save_checkpoint``'s ``train_iterator`` and ``val_loss``;
``last_optimizer_state`` is fairseq's ``Adam`` after ``N_UPDATES`` steps (``state[i] = {step,
exp_avg, exp_avg_sq}``, one group ``{lr, betas (a list), eps, weight_decay, amsgrad, params}``). ``ctc=True`` writes the encoder as a fine-tuned
``wav2vec_ctc`` / ``hubert_ctc`` model instead: keys under ``w2v_encoder.w2v_model.`` plus
``w2v_encoder.proj``, the pre-training config in ``cfg.model.w2v_args`` (pre-training heads removed,
as fairseq's ``remove_pretraining_modules`` does), ``w2v_args`` being the pre-training run's config
with ``criterion`` and ``lr_scheduler`` set to None, as ``Wav2VecEncoder`` leaves it.

Checked against the official code (facebookresearch/fairseq 3d262bb2, ``git archive`` into /tmp;
omegaconf 2.0.6, sacrebleu, bitarray in a /tmp venv; Python 3.11 with the dataclass-default shim
described in the check script): tests/official/check/fairseq_official.py builds each case with
fairseq's own ``Wav2Vec2Model`` / ``HubertModel`` (HuBERT with a fairseq ``Dictionary`` of
``LABELS``), ``FairseqAdam`` + ``PolynomialDecayLRSchedule`` stepped ``N_UPDATES`` times, and saves with the
old ``save_state`` functions (read from a48f2356 and f6d60e2f^, exec'd in today's
``checkpoint_utils``) and today's ``Trainer.save_checkpoint``. tests/official/check/compare.py
(run by the venv's Python, omegaconf importable, so the ``DictConfig`` pickles are unpickled by
omegaconf itself) then compared each pair: structure SAME (top-level keys in order, ``model`` keys
in fairseq's order with shapes and dtypes, optimizer ``state`` / ``param_groups``,
``optimizer_history``, ``extra_state``) and pickle globals SAME for all three cases (``args``:
``argparse.Namespace``, ``collections.OrderedDict``, ``torch.FloatStorage``,
``torch._utils._rebuild_tensor_v2``; ``dictcfg``: those without ``Namespace`` plus
``omegaconf.dictconfig.DictConfig``, ``omegaconf.nodes.AnyNode``, ``omegaconf.base.
ContainerMetadata``/``Metadata``, ``typing.Any``, ``collections.defaultdict``, ``__builtin__.dict``).
tests/official/check/fairseq_outputs.py then loaded the official files with e2mc
(``e2mc.models.fairseq``, no fairseq, no omegaconf): the transformers model's last hidden state
equals fairseq's ``extract_features`` output within 4.8e-7 (wav2vec2_args, hubert_dictcfg) and
7.2e-7 (wav2vec2_large_cfg), and the config e2mc reads from each official file equals the one it
reads from the generated file. The CTC form (``write(..., "wav2vec2_large_cfg", ctc=True)``) was
checked the same way against fairseq's ``Wav2VecCtc.build_model`` on the official
``wav2vec2_large_cfg.pt`` (its ``Wav2VecEncoder`` reading that file through
``load_checkpoint_to_cpu``), stepped and saved by ``Trainer.save_checkpoint``: pickle globals SAME;
structure SAME except that fairseq's ``cfg.model`` holds all 44 other ``Wav2Vec2CtcConfig`` fields
(fine-tuning dropouts, masking, freezing), of which the generator writes none (``_name``,
``w2v_path``, ``w2v_args`` only; with ``cfg.model`` cut to those, SAME, ``w2v_args`` included);
e2mc's encoder output equals fairseq's ``w2v_encoder.w2v_model`` within 2.4e-7 and the config it
reads is the same. The ``args`` form's Namespace holds the task and model options and
``arch``/``task``/``no_save_optimizer_state``, not the whole argparse namespace of a real run
(the check builds the same subset: pre-Hydra argparse does not run against today's fairseq).
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import sys
import typing
from argparse import Namespace
from pathlib import Path

import torch

N_UPDATES = 2
LABELS = [7]  # HuBERT: one label set of 7 symbols (fairseq Dictionary: 4 specials + 3)
_BASE = dict(
    conv_feature_layers="[(8, 10, 5), (8, 3, 2)]",
    encoder_layers=2,
    encoder_embed_dim=16,
    encoder_ffn_embed_dim=32,
    encoder_attention_heads=2,
    conv_pos=4,
    conv_pos_groups=2,
    final_dim=12,
)
_QUANT = dict(latent_vars=4, latent_groups=2, quantize_targets=True)
CASES = {  # case -> (fairseq model, save form, fairseq model options)
    "wav2vec2_args": ("wav2vec2", "args", {**_BASE, **_QUANT}),
    "wav2vec2_large_cfg": (
        "wav2vec2",
        "cfg",
        {**_BASE, **_QUANT, "extractor_mode": "layer_norm", "layer_norm_first": True, "conv_bias": True},
    ),
    "hubert_dictcfg": ("hubert", "dictcfg", {**_BASE, "label_rate": 50.0}),
}
HF_TINY = dict(  # the tiny transformers audio encoder the audio tests share (tests/audio/conftest.py)
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    conv_dim=(8, 8),
    conv_kernel=(10, 3),
    conv_stride=(5, 2),
    num_conv_pos_embeddings=4,
    num_conv_pos_embedding_groups=2,
)


def hf_config(case: str, **extra):
    """The transformers config each case's fairseq options describe (written out by hand)."""
    import transformers as tf

    family, _, opts = CASES[case]
    large = opts.get("layer_norm_first", False)
    kw = dict(HF_TINY, feat_extract_norm="layer" if large else "group", do_stable_layer_norm=large)
    kw.update(conv_bias=bool(opts.get("conv_bias", False)), mask_time_prob=0.0, **extra)
    return (tf.Wav2Vec2Config if family == "wav2vec2" else tf.HubertConfig)(**kw)


def task_options(family: str, opts: dict) -> dict:
    """The task section: the large wav2vec 2.0 models were trained on normalised audio."""
    name = "audio_pretraining" if family == "wav2vec2" else "hubert_pretraining"
    return {
        "_name": name,
        "data": "/data/manifest",
        "sample_rate": 16000,
        "normalize": bool(opts.get("layer_norm_first")),
    }


def extra_state(form: str) -> dict:
    """``extra_state`` as the trainer and ``save_checkpoint`` leave it (key order by era)."""
    loop = {"train_iterator": {"epoch": 1, "iterations_in_epoch": 2, "shuffle": True}, "val_loss": None}
    own = {"metrics": collections.OrderedDict(default=[]), "previous_training_time": 12.5}
    return {**own, **loop} if form == "cfg" else {**loop, **own}


def _rank(key: str) -> int:
    order = ("mask_emb", "label_embs_concat", "feature_extractor.", "post_extract_proj.", "quantizer.", "project_q.")
    order += ("encoder.pos_conv.", "encoder.layers.", "encoder.layer_norm.", "layer_norm.", "final_proj.")
    return next(i for i, p in enumerate(order) if key.startswith(p))


def to_fairseq(hf_state: dict, heads: dict) -> dict:
    """transformers encoder keys -> fairseq's, in fairseq's ``state_dict`` order, plus ``heads``."""
    layer = {
        "attention.q_proj": "self_attn.q_proj",
        "attention.k_proj": "self_attn.k_proj",
        "attention.v_proj": "self_attn.v_proj",
        "attention.out_proj": "self_attn.out_proj",
        "layer_norm": "self_attn_layer_norm",
        "feed_forward.intermediate_dense": "fc1",
        "feed_forward.output_dense": "fc2",
        "final_layer_norm": "final_layer_norm",
    }
    out = dict(heads)
    layer_norm_cnn = any(".conv_layers.1.layer_norm." in k for k in hf_state)
    for k, v in hf_state.items():
        parts = k.split(".")
        if k.startswith("feature_extractor."):
            i, part = parts[2], parts[3]
            sub = "0" if part == "conv" else ("2.1" if layer_norm_cnn else "2")
            new = f"feature_extractor.conv_layers.{i}.{sub}.{parts[-1]}"
        elif k.startswith("feature_projection.layer_norm."):
            new = "layer_norm." + parts[-1]
        elif k.startswith("feature_projection.projection."):
            new = "post_extract_proj." + parts[-1]
        elif k.startswith("encoder.pos_conv_embed.conv."):
            last = {"original0": "weight_g", "original1": "weight_v"}.get(parts[-1], parts[-1])
            new = "encoder.pos_conv.0." + last
        elif k.startswith("encoder.layers."):
            new = f"encoder.layers.{parts[2]}.{layer['.'.join(parts[3:-1])]}.{parts[-1]}"
        else:
            new = k  # encoder.layer_norm.*
        out[new] = v.detach().clone()
    return collections.OrderedDict(sorted(out.items(), key=lambda kv: _rank(kv[0])))


def heads_of(family: str, opts: dict, gen: torch.Generator) -> dict:
    d, final, cnn = opts["encoder_embed_dim"], opts["final_dim"], 8
    heads = {"mask_emb": torch.rand(d, generator=gen)}
    if family == "hubert":
        heads["label_embs_concat"] = torch.randn(sum(LABELS), final, generator=gen)
    else:
        g, v = opts["latent_groups"], opts["latent_vars"]
        heads["quantizer.vars"] = torch.rand(1, g * v, final // g, generator=gen)
        heads["quantizer.weight_proj.weight"] = torch.randn(g * v, cnn, generator=gen)
        heads["quantizer.weight_proj.bias"] = torch.zeros(g * v)
        heads["project_q.weight"] = torch.randn(final, final, generator=gen)
        heads["project_q.bias"] = torch.zeros(final)
    heads["final_proj.weight"] = torch.randn(final, d, generator=gen)
    heads["final_proj.bias"] = torch.zeros(final)
    return heads


def adam_state(model: dict) -> dict:
    """fairseq ``Adam``'s ``state_dict`` after ``N_UPDATES`` steps on every parameter."""
    state = {
        i: {"step": N_UPDATES, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        for i, p in enumerate(model.values())
    }
    group = {"lr": 5e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    return {"state": state, "param_groups": [{**group, "params": list(range(len(model)))}]}


# --- omegaconf 2.0's DictConfig pickle, without omegaconf ---------------------------------------


class _Omega:
    """An object pickled as the omegaconf class its subclass names, with ``state`` as ``__dict__``."""

    def __init__(self, state):
        self.state = state

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (type(self),), self.state


_CLASSES = {
    n: type(n.rsplit(".", 1)[1], (_Omega,), {"__module__": n.rsplit(".", 1)[0]})
    for n in (
        "omegaconf.dictconfig.DictConfig",
        "omegaconf.listconfig.ListConfig",
        "omegaconf.nodes.AnyNode",
        "omegaconf.base.ContainerMetadata",
        "omegaconf.base.Metadata",
    )
}


def _meta(container: bool, key, ref=typing.Any, obj=None, flags=None, key_type=None):
    state = {"ref_type": ref, "object_type": obj, "optional": True, "key": key, "flags": flags or {}}
    state["resolver_cache"] = collections.defaultdict(dict)
    if container:
        state.update(key_type=key_type, element_type=None)
    return _CLASSES["omegaconf.base." + ("ContainerMetadata" if container else "Metadata")](state)


def dictconfig(value, key=None, parent=None):
    """``OmegaConf.create(value)`` + ``set_struct(True)`` (at the root) as stand-in objects."""
    if isinstance(value, dict):
        root = parent is None
        meta = _meta(True, key, dict if root else typing.Any, flags={"struct": True} if root else None)
        node = _CLASSES["omegaconf.dictconfig.DictConfig"]({"_metadata": meta, "_parent": parent, "_content": None})
        node.state["_content"] = {k: dictconfig(v, k, node) for k, v in value.items()}
        return node
    if isinstance(value, (list, tuple)):
        meta = _meta(True, key, obj=list, key_type=int)
        node = _CLASSES["omegaconf.listconfig.ListConfig"]({"_metadata": meta, "_parent": parent, "_content": None})
        node.state["_content"] = [dictconfig(v, i, node) for i, v in enumerate(value)]
        return node
    return _CLASSES["omegaconf.nodes.AnyNode"]({"_metadata": _meta(False, key), "_parent": parent, "_val": value})


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, writing the stand-in classes under their omegaconf names."""

    def save_global(self, obj, name=None):
        if isinstance(obj, type) and issubclass(obj, _Omega) and obj is not _Omega:
            self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


class _PickleModule:
    Pickler = _Pickler


# --- the file ----------------------------------------------------------------------------------


def checkpoint(case: str, hf_model, *, ctc: bool = False, seed: int = 0) -> dict:
    """The dict fairseq saves for ``case`` with ``hf_model``'s encoder weights."""
    family, form, opts = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    heads = heads_of(family, opts, gen)
    model = to_fairseq(hf_model.state_dict(), heads)
    task = task_options(family, opts)
    model_cfg = {"_name": family, **opts}
    criterion = "HubertCriterion" if family == "hubert" else "Wav2vecCriterion"
    if ctc:
        enc = {
            k: v
            for k, v in model.items()
            if not k.startswith(("quantizer.", "project_q.", "final_proj.", "label_embs"))
        }
        model = collections.OrderedDict((f"w2v_encoder.w2v_model.{k}", v) for k, v in enc.items())
        model["w2v_encoder.proj.weight"] = torch.randn(5, opts["encoder_embed_dim"], generator=gen)
        model["w2v_encoder.proj.bias"] = torch.zeros(5)
        w2v_args = {**_cfg(task, model_cfg, family), "criterion": None, "lr_scheduler": None}
        if form == "args":  # an argparse-era fine-tuning keeps the pre-training's Namespace
            w2v_args = Namespace(
                **{k: v for k, v in task.items() if k != "_name"}, task=task["_name"], **opts, arch=family
            )
        name = "wav2vec_ctc" if family == "wav2vec2" else "hubert_ctc"
        model_cfg = {"_name": name, "w2v_path": "/models/pretrained.pt", "w2v_args": w2v_args}
        task = {"_name": "audio_finetuning", "data": "/data/manifest", "normalize": task["normalize"]}
        criterion = "CtcCriterion"
    history = [
        {
            "criterion_name": criterion,
            "optimizer_name": "FairseqAdam",
            "lr_scheduler_state": {"best": None},
            "num_updates": N_UPDATES,
        }
    ]
    extra = extra_state(form)
    if form == "args":
        args = Namespace(**{k: v for k, v in task.items() if k != "_name"}, task=task["_name"])
        args = Namespace(**vars(args), **{k: v for k, v in model_cfg.items() if k != "_name"}, arch=model_cfg["_name"])
        args.no_save_optimizer_state = False
        return {
            "args": args,
            "model": model,
            "optimizer_history": history,
            "extra_state": extra,
            "last_optimizer_state": adam_state(model),
        }
    cfg = _cfg(task, model_cfg, family)
    if form == "dictcfg":
        state = {
            "cfg": dictconfig(cfg),
            "args": None,
            "model": model,
            "optimizer_history": history,
            "extra_state": extra,
        }
        return {**state, "task_state": {}, "last_optimizer_state": adam_state(model)}
    state = {"args": None, "cfg": cfg, "model": model, "criterion": None, "optimizer_history": history}
    return {**state, "task_state": {}, "extra_state": extra, "last_optimizer_state": adam_state(model)}


def _cfg(task: dict, model_cfg: dict, family: str) -> dict:
    """The run's config as fairseq's Hydra entry point holds it (the sections a checkpoint needs)."""
    criterion = "ctc" if model_cfg["_name"].endswith("_ctc") else "hubert" if family == "hubert" else "wav2vec"
    return {
        "common": {"fp16": False, "seed": 1},
        "checkpoint": {"no_save_optimizer_state": False, "write_checkpoints_asynchronously": False},
        "ema": {"store_ema": False},
        "task": task,
        "model": model_cfg,
        "criterion": {"_name": criterion},
        "optimizer": {"_name": "adam"},
        "lr_scheduler": {"_name": "polynomial_decay"},
    }


def hf_model(case: str, seed: int = 0):
    """The tiny transformers model of ``case``, seeded."""
    import transformers as tf

    torch.manual_seed(seed)
    family = CASES[case][0]
    return (tf.Wav2Vec2Model if family == "wav2vec2" else tf.HubertModel)(hf_config(case)).eval()


def write(folder, case: str, *, ctc: bool = False, seed: int = 0, name: str | None = None):
    """Write ``<folder>/<name or case>.pt`` as fairseq saves it; returns ``(path, reference model)``."""
    ref = hf_model(case, seed)
    obj = checkpoint(case, ref, ctc=ctc, seed=seed)
    path = Path(folder) / f"{name or case}.pt"
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_module=_PickleModule if CASES[case][1] == "dictcfg" else pickle)
    path.write_bytes(buf.getvalue())
    return path, ref


if __name__ == "__main__":  # python gen_fairseq.py OUT: every case, for check/compare.py
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for c in CASES:
        print(write(out, c)[0])
    print(write(out, "wav2vec2_large_cfg", ctc=True, name="wav2vec2_large_cfg_ctc")[0])
