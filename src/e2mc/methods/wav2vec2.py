"""wav2vec 2.0's own objective (Baevski et al., NeurIPS 2020) for continuing a speech encoder.

Source: a transformers ``Wav2Vec2ForPreTraining`` folder (``save_pretrained`` or a hub name,
``hf:<...>``; keys ``wav2vec2.*`` next to ``quantizer.*``, ``project_hid.*``, ``project_q.*``). Its
encoder is the backbone (``models.audio.AudioEncoder``); its pre-training parts are this method's
heads, saved, resumed and exported with the model: ``mask_embed`` (``wav2vec2.masked_spec_embed``,
the learned vector of masked frames; ``weight``), ``quantizer``
(``Wav2Vec2GumbelVectorQuantizer``: ``codevectors``, ``weight_proj.*``), ``project_hid`` and
``project_q`` (Linear). A source without the quantiser (a ``Wav2Vec2Model`` folder, HuBERT, WavLM,
AVES) is refused with one line pointing to ``--method vicreg``; ``--fresh-heads`` on an e2mc run
checkpoint of another method builds a random quantiser explicitly, with a warning.

Step (per crop; transformers' ``Wav2Vec2ForPreTraining.forward`` with its ``_compute_mask_indices``
and ``_sample_negative_indices``, on numpy's global RNG, which run checkpoints save per rank):
the CNN features, projected; spans of frames masked (``mask_time_prob``, ``mask_time_length``,
``mask_time_min_masks`` of the checkpoint's config unless set: e2mc switches transformers' own
SpecAugment off, so the masking is this method's, ``AudioEncoder.frame_hook``) with
``mask_embed``; the transformer; ``project_hid`` of every frame against the Gumbel-quantised,
``project_q``-projected CNN features of the masked frames, ``num_negatives`` distractors from the
same crop, cosine / ``contrastive_logits_temperature``; plus ``diversity_loss_weight`` x the
codebook diversity (``criteria.wav2vec2``). Settings: the options below, each 0 (-1 for the
diversity weight) meaning the checkpoint config's value (``config.json``; note that published
configs hold the fine-tuning ``mask_time_prob`` 0.05, while the paper pre-trains with 0.65).

Gumbel temperature: ``max(start x decay^k, floor)`` at update k (the paper: 2 -> 0.5 for BASE, 0.1
for LARGE, x 0.999995 per update). A fresh pre-training starts at ``gumbel_temp_max`` (2); a
continuation at ``continue_gumbel_temp``, by default 0.5: where BASE's 400k updates ended
(2 x 0.999995^400000 = 0.27, held at the floor 0.5); set it for a LARGE source (about 0.1 after
LV-60k's 600k updates).

Views and add-ons: the audio views' two crops of one recording (``data.audio``); the objective
runs on each crop (its own masking) and is averaged over both; E2MC and the other add-ons take the
pooled utterance embeddings (mean+std over frames of the last hidden state of that same, masked
pass: one encoder pass per crop) of the two crops. Not reproduced: fairseq's 0.1 gradient scale of
the CNN and its feature penalty.
"""

from __future__ import annotations

import os
from typing import Any

from e2mc.errors import CheckpointError, ConfigError
from e2mc.methods.adapter import Adapter, Parts
from e2mc.methods.base import Method, Option, register
from e2mc.methods.hfolder import preprocessor_json, published_config, write_folder
from e2mc.methods.layout import is_tensor_dict

PRETRAINING_HEADS = ("quantizer", "project_hid", "project_q")
USE_VICREG = "continue it with --method vicreg (the target-free objective) instead"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("the wav2vec 2.0 objective needs transformers: pip install 'e2mc[audio]'") from None
    transformers.utils.logging.disable_progress_bar()
    return transformers


def source_config(arch: str):
    """The transformers config of an ``hf:<folder or hub name>`` arch as published (e2mc's training
    overrides not applied); ``CheckpointError`` for another arch."""
    if not (isinstance(arch, str) and arch.startswith("hf:")):
        raise CheckpointError(
            f"the wav2vec 2.0 objective continues a transformers Wav2Vec2ForPreTraining folder (hf:<folder or hub "
            f"name>), not {arch}; {USE_VICREG}"
        )
    tf = _transformers()
    try:
        return tf.AutoConfig.from_pretrained(os.path.expanduser(arch[3:]))
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/HTTP errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"cannot read the transformers config of {arch[3:]!r} ({first})") from None


def _classes():
    """``(MaskEmbedding, State)``, defined on first use (this module imports no torch)."""
    global _CLASSES
    if _CLASSES is None:
        import torch
        from torch import nn

        class MaskEmbedding(nn.Module):
            """transformers' ``masked_spec_embed``: the vector a masked frame is replaced by."""

            def __init__(self, hidden: int):
                super().__init__()
                self.weight = nn.Parameter(torch.empty(int(hidden)).uniform_())

        class State(nn.Module):
            """The run's resolved settings (``settings``, a ``Settings``); nothing to save."""

            def __init__(self, settings):
                super().__init__()
                self.settings = settings

        _CLASSES = (MaskEmbedding, State)
    return _CLASSES


_CLASSES = None


class Settings:
    """The objective's settings, resolved against the source's config (see the module docstring)."""

    def __init__(self, cfg: Any, config: Any):
        m = cfg.method
        self.mask_prob = float(m.mask_time_prob or config.mask_time_prob)
        self.mask_length = int(m.mask_time_length or config.mask_time_length)
        self.min_masks = int(getattr(config, "mask_time_min_masks", 2))
        self.num_negatives = int(m.num_negatives or config.num_negatives)
        self.temperature = float(m.contrastive_temperature or config.contrastive_logits_temperature)
        self.diversity_weight = float(m.diversity_weight if m.diversity_weight >= 0 else config.diversity_loss_weight)
        self.quantizer_dropout = float(getattr(config, "feat_quantizer_dropout", 0.0))
        self.gumbel_temp = gumbel_temperature(cfg, 0)
        if self.mask_prob <= 0:
            raise ConfigError(
                "the checkpoint's config has mask_time_prob=0, so no frame would be masked; set "
                "method.mask_time_prob (the paper's pre-training: 0.65)"
            )

    def describe(self) -> str:
        return (
            f"wav2vec 2.0 objective: mask_time_prob {self.mask_prob:g}, mask_time_length {self.mask_length}, "
            f"min masks {self.min_masks}, {self.num_negatives} negatives, temperature {self.temperature:g}, "
            f"diversity weight {self.diversity_weight:g}"
        )


class MaskedPass:
    """``AudioEncoder.frame_hook``: the encoder pass of a training step with the objective's masking
    (``Wav2Vec2Model.forward`` with ``mask_time_indices`` from ``_compute_mask_indices``); keeps
    the CNN features, the last hidden state and the mask for ``forward_heads`` (``take``)."""

    def __init__(self, settings: Settings, embed: Any):
        self.settings, self.embed, self.kept = settings, embed, None

    def __call__(self, encoder, x):
        import numpy as np
        import torch
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

        s, m = self.settings, encoder.model
        hidden, extract = m.feature_projection(m.feature_extractor(x).transpose(1, 2))
        n, frames = hidden.shape[:2]
        if frames < s.mask_length:
            raise ConfigError(
                f"a crop gives {frames} encoder frames, fewer than mask_time_length {s.mask_length}: raise "
                "data.audio.crop_seconds or lower method.mask_time_length"
            )
        mask_np = _compute_mask_indices((n, frames), s.mask_prob, s.mask_length, min_masks=s.min_masks)
        if (mask_np.sum(1) < 2).any():
            raise ConfigError(
                "a crop has fewer than 2 masked frames, too few for negatives: raise method.mask_time_prob "
                "or data.audio.crop_seconds"
            )
        mask = torch.from_numpy(np.ascontiguousarray(mask_np)).to(hidden.device)
        hidden = torch.where(mask[..., None], self.embed.weight.to(hidden.dtype), hidden)
        last = m.encoder(hidden).last_hidden_state
        if getattr(m, "adapter", None) is not None:
            last = m.adapter(last)
        self.kept = (extract, last, mask, mask_np)
        return last

    def take(self):
        """The kept tensors of the last pass (then forgotten), or None."""
        kept, self.kept = self.kept, None
        return kept


def gumbel_temperature(cfg: Any, step: int) -> float:
    """``max(start x decay^step, floor)``: start ``continue_gumbel_temp`` in a continuation (the
    floor never above it), ``gumbel_temp_max`` in a pre-training."""
    m = cfg.method
    cont = getattr(cfg, "mode", "pretrain") == "continue"
    start = float(m.continue_gumbel_temp if cont else m.gumbel_temp_max)
    floor = min(float(m.gumbel_temp_min), start)
    return max(start * float(m.gumbel_temp_decay) ** int(step), floor)


class Wav2Vec2Folder(Adapter):
    """A transformers ``Wav2Vec2ForPreTraining`` ``save_pretrained`` folder. Loading goes through
    ``hf:<folder>`` (``Wav2Vec2.source_heads``); a loose state dict in its naming is recognised and
    refused (it needs its config.json). ``export --to wav2vec2 --out <folder>`` writes config.json
    (the source's), model.safetensors (its key names) and the source's preprocessor_config.json."""

    name = "wav2vec2"
    holds_audio = True
    expected = ("wav2vec2.feature_projection.projection.weight", "quantizer.codevectors", "project_q.weight")
    description = "transformers Wav2Vec2ForPreTraining folder (config.json + wav2vec2.*, quantizer.*, project_*)"

    def detect(self, obj):
        ok = is_tensor_dict(obj) and any(k.startswith("wav2vec2.") for k in obj) and "quantizer.codevectors" in obj
        return 0.9 if ok else 0.0

    def split(self, obj):
        raise CheckpointError(
            "this is a transformers Wav2Vec2ForPreTraining state dict without its config: pass the "
            "save_pretrained folder that holds it (config.json next to the weights) or hf:<hub name>"
        )

    def pack(self, backbone, heads, meta):
        missing = [h for h in (*PRETRAINING_HEADS, "mask_embed") if h not in heads]
        if missing or not all(k.startswith("model.") for k in backbone):
            raise CheckpointError(
                f"a Wav2Vec2ForPreTraining folder needs a transformers encoder and the heads {missing or ''} "
                "of --method wav2vec2; export --to transformers (the encoder alone), e2mc or safetensors instead"
            )
        encoder = meta.get("encoder")  # its own config: the run's source may be gone
        config = published_config(encoder) if hasattr(encoder, "published") else source_config(meta.get("arch"))
        if getattr(config, "model_type", None) != "wav2vec2":  # transformers would build its own class, untrained
            raise CheckpointError(
                f"the encoder is a {config.model_type!r} model ({meta.get('arch')}); the wav2vec2 layout writes "
                "Wav2Vec2ForPreTraining folders of wav2vec 2.0 encoders only: export --to transformers (its own "
                "encoder class), e2mc or safetensors instead"
            )
        config.architectures = ["Wav2Vec2ForPreTraining"]
        sd = {"wav2vec2." + k[len("model.") :]: v for k, v in backbone.items()}
        sd["wav2vec2.masked_spec_embed"] = heads["mask_embed"]["weight"]
        sd.update({f"{h}.{k}": v for h in PRETRAINING_HEADS for k, v in heads[h].items()})
        return {"config": config.to_json_string(), "state_dict": sd, "preprocessor": preprocessor_json(meta)}

    def save(self, obj, path, error):
        return write_folder(obj, path, error, self.name)


@register
class Wav2Vec2(Method):
    name = "wav2vec2"
    heads = ("mask_embed", *PRETRAINING_HEADS)
    outputs = ("z", "c", "q", "neg", "mask", "ppl")
    adapters = (Wav2Vec2Folder(),)
    addon_input = "pooled utterance embeddings (mean+std of the last hidden state) of the two masked crops"
    view_recipe = dict(n_large=2)  # audio: data.audio's two crops of one recording
    e2mc_defaults = (10.0, 1.0, "sigmoid")  # e2mc's choice (VICReg's): the E2MC paper has no audio runs
    paper_eps = 1e-7
    options = {
        "mask_time_prob": Option(0.0, 0, hi=1, help="share of frames starting a masked span; 0: the config's"),
        "mask_time_length": Option(0, 0, help="frames per masked span; 0: the config's mask_time_length"),
        "num_negatives": Option(0, 0, help="distractors per masked frame; 0: the config's num_negatives"),
        "contrastive_temperature": Option(0.0, 0, help="cosine temperature; 0: contrastive_logits_temperature"),
        "diversity_weight": Option(-1.0, -1, help="diversity loss weight; -1: the config's diversity_loss_weight"),
        "gumbel_temp_max": Option(2.0, 0, lo_open=True, help="Gumbel temperature at a pre-training's start"),
        "gumbel_temp_min": Option(0.5, 0, lo_open=True, help="its floor (paper: 0.5 BASE, 0.1 LARGE)"),
        "gumbel_temp_decay": Option(0.999995, 0, lo_open=True, hi=1, help="its factor per update (paper)"),
        "continue_gumbel_temp": Option(
            0.5, 0, lo_open=True, help="Gumbel temperature at a continuation's start (0.5: where BASE ended)"
        ),
    }

    # -- heads ------------------------------------------------------------------------------
    def default_head_sizes(self, in_dim):  # wav2vec 2.0 BASE's quantiser; a source gives its own
        hidden = int(in_dim) // 2
        return {
            "hidden": hidden,
            "conv_dim": 512,
            "groups": 2,
            "per_group": 320,
            "codevector_dim": 256,
            "proj_dim": 256,
        }

    def build_heads(self, in_dim, sizes):
        import torch
        from torch import nn

        tf = _transformers()
        from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2GumbelVectorQuantizer

        g, v, dc = int(sizes["groups"]), int(sizes["per_group"]), int(sizes["codevector_dim"])
        if dc % g:
            raise ConfigError(f"codevector_dim {dc} is not a multiple of the {g} codebook groups")
        config = tf.Wav2Vec2Config(
            conv_dim=[int(sizes["conv_dim"])], conv_stride=[1], conv_kernel=[1], num_codevector_groups=g,
            num_codevectors_per_group=v, codevector_dim=dc,
        )  # fmt: skip
        quantizer = Wav2Vec2GumbelVectorQuantizer(config)
        with torch.no_grad():  # transformers' _init_weights of the quantiser
            nn.init.normal_(quantizer.weight_proj.weight, mean=0.0, std=1.0)
            nn.init.zeros_(quantizer.weight_proj.bias)
            nn.init.uniform_(quantizer.codevectors)
        return {
            "mask_embed": _classes()[0](sizes["hidden"]),
            "quantizer": quantizer,
            "project_hid": nn.Linear(int(sizes["hidden"]), int(sizes["proj_dim"])),
            "project_q": nn.Linear(dc, int(sizes["proj_dim"])),
        }

    def head_sizes_from_weights(self, heads):
        q, hid, pq = (heads.get(h) or {} for h in PRETRAINING_HEADS)
        out = {}
        if "codevectors" in q and "weight_proj.weight" in q and "weight" in pq:
            gv, c = (int(n) for n in q["weight_proj.weight"].shape)
            dc, per = int(pq["weight"].shape[1]), int(q["codevectors"].shape[2])
            out.update(conv_dim=c, codevector_dim=dc, groups=dc // per, per_group=gv // max(1, dc // per))
        if "weight" in hid:
            out["proj_dim"], out["hidden"] = (int(n) for n in hid["weight"].shape)
        return out

    def source_heads(self, arch):
        config = source_config(arch)
        where = arch[3:]
        if getattr(config, "model_type", None) != "wav2vec2":
            raise CheckpointError(
                f"{where} is a {config.model_type!r} encoder without wav2vec 2.0's quantizer; {USE_VICREG}"
            )
        tf = _transformers()
        level = tf.utils.logging.get_verbosity()
        tf.utils.logging.set_verbosity_error()  # the missing quantiser is reported below, in one line
        try:
            model, info = tf.Wav2Vec2ForPreTraining.from_pretrained(os.path.expanduser(where), output_loading_info=True)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot load the weights of {where!r}: {exc}"[:300]) from None
        finally:
            tf.utils.logging.set_verbosity(level)
        missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(PRETRAINING_HEADS))
        if missing:
            raise CheckpointError(
                f"{where} holds no wav2vec 2.0 quantizer ({missing[0]} missing: a Wav2Vec2Model save, not "
                f"Wav2Vec2ForPreTraining); {USE_VICREG}"
            )
        heads = {
            h: {k: t.detach().clone() for k, t in getattr(model, h).state_dict().items()} for h in PRETRAINING_HEADS
        }
        notes = [f"quantizer, project_hid, project_q: the Wav2Vec2ForPreTraining heads of {where}"]
        taken = list(PRETRAINING_HEADS)
        embed = getattr(model.wav2vec2, "masked_spec_embed", None)
        if embed is not None and "wav2vec2.masked_spec_embed" not in info.get("missing_keys", ()):
            heads["mask_embed"] = {"weight": embed.detach().clone()}
            notes.append("mask_embed: its wav2vec2.masked_spec_embed")
            taken += ["masked_spec_embed", "wav2vec2.masked_spec_embed"]
        else:
            notes.append("mask_embed: none in the file (its config masks nothing); a fresh uniform vector")
        sizes = self.head_sizes_from_weights(heads)
        sizes["hidden"] = int(config.hidden_size)
        layout = {"format": self.name}
        return Parts({}, heads, method=self.name, head_sizes=sizes, notes=notes, layout=layout, taken=taken)

    def forward_heads(self, model, features, sizes, images):
        import torch
        import torch.nn.functional as F
        from transformers.models.wav2vec2.modeling_wav2vec2 import _sample_negative_indices

        out: dict = {k: [] for k in self.outputs}
        out["z"] = list(features.split(sizes))
        hook = getattr(model.backbone, "frame_hook", None)
        kept = hook.take() if isinstance(hook, MaskedPass) else None
        if kept is None:  # eval mode or no training state: the pooled embedding alone
            return out
        extract, last, mask, mask_np = kept
        s, frames = hook.settings, mask.shape[1]
        c = model.project_hid(last)
        extract = F.dropout(extract, s.quantizer_dropout, model.training)  # Wav2Vec2ForPreTraining.dropout_features
        start = 0
        for e, mk, n in zip(extract.split(sizes), mask.split(sizes), sizes):
            qv, ppl = model.quantizer(e, mask_time_indices=mk)
            out["q"].append(model.project_q(qv.to(model.project_q.weight.dtype)))
            neg = _sample_negative_indices((n, frames), s.num_negatives, mask_np[start : start + n])
            out["neg"].append(torch.from_numpy(neg).to(mask.device))
            out["mask"].append(mk)
            out["ppl"].append(ppl)
            start += n
        out["c"] = list(c.split(sizes))
        return out

    # -- loss and state ----------------------------------------------------------------------
    def build_criterion(self, cfg):
        from e2mc.criteria.wav2vec2 import Wav2Vec2Loss

        return Wav2Vec2Loss()  # its settings come from the source's config: set per step (base_loss)

    def base_loss(self, out, criterion, zs, ctx):
        import torch

        state = ctx.state
        if state is None or not out["c"]:
            raise ConfigError(
                "the wav2vec 2.0 objective needs its masked pass and settings (Method.build_state, as the "
                "trainer does); addon.cov_weight=auto is not measured for it: give a number"
            )
        s = state.settings
        criterion.temperature, criterion.diversity_weight = s.temperature, s.diversity_weight
        q = ctx.model.quantizer if ctx.model is not None else None
        criterion.num_codevectors = q.num_groups * q.num_vars if q is not None else criterion.num_codevectors
        terms = criterion(out["c"], out["q"], out["neg"], out["mask"], out["ppl"])
        terms["gumbel_temp"] = torch.tensor(s.gumbel_temp, device=terms["loss"].device)
        return terms

    def check_model(self, model):
        super().check_model(model)
        config = getattr(getattr(model.backbone, "model", None), "config", None)
        if getattr(config, "model_type", None) != "wav2vec2":
            kind = getattr(config, "model_type", None) or type(model.backbone).__name__
            raise CheckpointError(
                f"the wav2vec 2.0 objective needs a transformers wav2vec2 encoder, not {kind}; {USE_VICREG}"
            )
        fits = {"conv_dim": int(config.conv_dim[-1]), "hidden": int(config.hidden_size)}
        has = {"conv_dim": model.quantizer.weight_proj.in_features, "hidden": model.project_hid.in_features}
        if has != fits:  # fresh heads (--fresh-heads) built at sizes that do not fit this encoder
            sizes = ", ".join(f"{k}: {v}" for k, v in fits.items())
            raise CheckpointError(
                f"the quantizer heads take {has} but this encoder gives {fits}; build them with "
                f"--set model.head_sizes={{{sizes}}}"
            )

    def build_state(self, cfg, model, world_size, global_batch, log):
        """The settings (resolved against the source's config, as the encoder carries it) and the masked pass, installed as
        the encoder's ``frame_hook``."""
        settings = Settings(cfg, published_config(model.backbone))  # the encoder's own: its source may be gone
        model.backbone.frame_hook = MaskedPass(settings, model.mask_embed)
        model.quantizer.temperature = settings.gumbel_temp
        log(settings.describe())
        return _classes()[1](settings)

    def init_state(self, state, report, cfg, log):
        built = getattr(report, "heads_built", None) or []
        if "quantizer" in built:
            log(
                "warning: the wav2vec 2.0 quantizer and projections are random (--fresh-heads), not the "
                "pre-trained ones: the objective starts from untrained targets"
            )

    def describe(self, cfg):
        m = cfg.method
        start = gumbel_temperature(cfg, 0)
        floor = min(m.gumbel_temp_min, start)
        return f"Gumbel temperature {start:g} -> floor {floor:g} (x {m.gumbel_temp_decay:g} per update)"

    def before_forward(self, ctx):
        """The Gumbel temperature of this update."""
        t = gumbel_temperature(ctx.cfg, ctx.run_step)
        ctx.model.quantizer.temperature = t
        if ctx.state is not None:
            ctx.state.settings.gumbel_temp = t
