"""HuBERT's own objective (Hsu et al., 2021) for continuing an audio encoder: masked prediction of
k-means targets computed from the encoder's own layer features on the user's recordings.

The iteration recipe (fairseq ``examples/hubert``, commit 2f5784c): a fixed model of the previous
iteration labels every frame with its nearest k-means centroid (``simple_kmeans``:
``MiniBatchKMeans`` on the features of one transformer layer; k = 500 and layer 6 of 12 for the
paper's 2nd iteration on a base model, 100 clusters being the 1st iteration's MFCC targets), then
the encoder learns to predict the targets of masked frames. Here, for any audio encoder e2mc loads
(transformers ``HubertModel``, ``Wav2Vec2Model``, ``WavLMModel``, ``Data2VecAudioModel``, AVES: the
objective is generic masked prediction):

* **Labeller**: ``label_model``, a frozen copy of the encoder as the run starts (a momentum-free
  teacher slot: ``label_model.backbone.*``, saved with the model, never trained). HuBERT labels with
  a fixed previous-iteration model; the start is that model, so the targets do not drift with the
  encoder being trained (the current encoder would chase its own labels). Continuing a run
  checkpoint of this method continues its iteration: its labeller, centroids and heads are kept. It runs in eval mode under ``no_grad`` up to layer ``kmeans_layer``
  (0: half the depth, ``round(L / 2)``: 6 of 12 for a base model, 12 of 24 for a large one).
* **k-means** (``before_training``: before a heads warm-up, which needs the targets): the
  labeller's layer features of the training views of up to ``kmeans_batches`` (20) batches, every
  frame a row, at most ``kmeans_max_frames`` (100,000; a seeded random subset of each batch's, as
  ``learn_kmeans.py``'s ``percent`` samples utterances) fitted with ``learn_kmeans.py``'s
  ``MiniBatchKMeans`` settings (k-means++, ``max_iter`` 100, ``batch_size`` 10000, ``tol`` 0,
  ``max_no_improvement`` 100, ``n_init`` 20, ``reassignment_ratio`` 0), seeded with
  ``train.seed``. Its cost is mostly the 20 k-means++ initialisations on 30,000 rows (measured:
  about 30 s each for k = 500 on 768 features on one shared CPU core; scikit-learn uses all cores). Under torchrun
  rank 0 fits on its own batches and the centroids are broadcast (one all_reduce that the other
  ranks wait in: keep the fit within the process group's timeout), so every rank labels alike. The
  centroids are the method state (``"hubert_kmeans"``): saved in every checkpoint and restored on
  resume, never refit; a new continuation of a run checkpoint of this method keeps the file's.
* **Masking**: per step, spans of ``mask_length`` 10 frames drawn by transformers'
  ``_compute_mask_indices`` with ``mask_prob`` 0.8 and fairseq's ``min_masks`` 2 (HuBERT base's
  pre-training values; transformers configs carry the fine-tuning SpecAugment's 0.05, so they are
  not used), from numpy's RNG (seeded and checkpointed by the trainer). The masked frames of the
  projected CNN features are replaced by the head's ``mask_emb`` (a forward hook on the encoder's
  ``feature_projection``, where transformers applies ``masked_spec_embed``: e2mc's backbones
  switch SpecAugment off). ``mask_emb`` starts from the file's ``masked_spec_embed`` (AVES:
  ``mask_generator.mask_embedding``) when the source has one, else uniform in [0, 1) as fairseq.
* **Head** (``hubert_head``, fairseq's names): ``final_proj`` (hidden -> ``final_dim``: 256 below
  1024 features, HuBERT base's; 768 from 1024, large's), ``label_embs_concat`` (k x final_dim,
  uniform init) and ``mask_emb`` (hidden). Logits are ``cos(final_proj(x_t), e_c) / logit_temp``
  (0.1); the loss is ``criteria.hubert.HuBERTLoss`` (masked frames' cross-entropy, weight 1;
  unmasked 0; the CNN features' squared mean x ``feature_pen_weight`` 10). Fresh heads are warmed
  up with the encoder frozen for ``train.head_warmup_steps`` (set it, e.g. 500).
* **Views and add-on**: the audio views' two crops of a recording (one batch through the encoder;
  both are masked and predicted, so each recording gives two utterances of HuBERT's objective).
  The labeller sees the same crop as the encoder, before masking (the views' gain, noise and time
  mask included: set ``data.audio.noise_p=0``, ``mask_p=0``, ``gain_db=0`` for HuBERT's clean
  inputs). E2MC and the other add-ons attach to the pooled utterance embedding (mean + std over
  frames of the last hidden state) of the two crops' masked pass: no second, unmasked forward;
  the span masking acts as one more augmentation of the views the add-on compares.

``addon.cov_weight=auto`` is refused (the calibration runs before the targets exist).
"""

from __future__ import annotations

from e2mc.errors import ConfigError
from e2mc.methods.base import Method, Option, register

HEAD = "hubert_head"
LABELLER = "label_model"
# examples/hubert/simple_kmeans/learn_kmeans.py's argparse defaults; checked by
# tests/official/check/hubert_kmeans_official.py (fairseq 3d262bb2): the official script's fit and
# MiniBatchKMeans(random_state=seed, **FAIRSEQ_KMEANS) give bit-identical centroids on the same rows
FAIRSEQ_KMEANS = dict(
    init="k-means++",
    max_iter=100,
    batch_size=10000,
    tol=0.0,
    max_no_improvement=100,
    n_init=20,
    reassignment_ratio=0.0,
    compute_labels=False,
    init_size=None,
)
MIN_MASKS = 2  # fairseq's apply_mask: compute_mask_indices(..., min_masks=2)
_CLASSES = None


def _modules():
    """``(MaskedPredictionHead, KMeansState, Masker)``, defined on first use (no torch at import)."""
    global _CLASSES
    if _CLASSES is None:
        import torch
        from torch import nn

        class MaskedPredictionHead(nn.Module):
            """``final_proj``, ``label_embs_concat`` (k, final_dim), ``mask_emb`` (hidden): fairseq's."""

            def __init__(self, hidden: int, final_dim: int, classes: int):
                super().__init__()
                self.final_proj = nn.Linear(hidden, final_dim)
                self.label_embs_concat = nn.Parameter(torch.empty(classes, final_dim))
                nn.init.uniform_(self.label_embs_concat)
                self.mask_emb = nn.Parameter(torch.empty(hidden).uniform_())

        class KMeansState(nn.Module):
            """The centroids (k, D) of the labeller's layer ``layer``, and whether they are fitted."""

            def __init__(self, k: int, dim: int, layer: int):
                super().__init__()
                self.register_buffer("centroids", torch.zeros(k, dim))
                self.fitted = False
                self.layer = int(layer)
                self.log = print

        class Masker:
            """The forward hooks of the online encoder. Armed by ``before_forward`` for one pass: the
            projected CNN features' masked frames become ``mask_emb``; the pass's mask, the CNN
            features' squared mean and the last hidden state are kept in ``record``."""

            def __init__(self, head, mask_prob: float, mask_length: int):
                self.head, self.mask_prob, self.mask_length = head, float(mask_prob), int(mask_length)
                self.armed, self.record = False, {}

            def projection_hook(self, module, inputs, output):
                if not self.armed:
                    return None
                from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

                h = output[0] if isinstance(output, tuple) else output
                n, t = h.shape[:2]
                mask = _compute_mask_indices((n, t), self.mask_prob, self.mask_length, min_masks=MIN_MASKS)
                mask = torch.from_numpy(mask).to(h.device)
                self.record = {"mask": mask, "pen": inputs[0].float().pow(2).mean()}
                h = torch.where(mask.unsqueeze(-1), self.head.mask_emb.to(h.dtype), h)
                return (h, *output[1:]) if isinstance(output, tuple) else h

            def output_hook(self, module, inputs, output):
                if self.armed and "mask" in self.record:
                    self.record["frames"] = output[0] if isinstance(output, tuple) else output.last_hidden_state
                    self.armed = False

            def take(self) -> dict:
                rec, self.record, self.armed = self.record, {}, False
                return rec

        _CLASSES = (MaskedPredictionHead, KMeansState, Masker)
    return _CLASSES


class _Stop(Exception):
    """Ends the labeller's forward at the layer whose output it needs."""


def encoder_of(backbone):
    """The transformers encoder inside an e2mc audio backbone; ConfigError for anything else."""
    enc = getattr(backbone, "model", None)
    if getattr(backbone, "input_ndim", 4) != 2 or not hasattr(enc, "feature_projection") or not hasattr(enc, "encoder"):
        raise ConfigError(
            "method hubert continues a speech or bioacoustic encoder (hf:<folder or hub name>, a save_pretrained "
            "folder or aves:<file.pt>) on an audio folder; for an image backbone use another --method"
        )
    return enc


def label_layer(cfg, depth: int) -> int:
    """``method.kmeans_layer``, or half the depth when it is 0; ConfigError beyond the encoder's depth."""
    layer = int(cfg.method.kmeans_layer) or max(1, round(depth / 2))
    if layer > depth:
        raise ConfigError(
            f"method.kmeans_layer={layer} but the encoder has {depth} transformer layers; give 1..{depth} (0: {max(1, round(depth / 2))})"
        )
    return layer


def layer_features(labeller, wave, layer: int):
    """The frozen labeller's output of transformer layer ``layer`` (1-based; before any final layer
    norm, as fairseq's ``extract_features(output_layer=layer)``) for waveforms (N, samples): (N, T, D),
    in eval mode under ``no_grad``; the forward stops at that layer."""
    import torch

    backbone = labeller["backbone"]
    enc, kept = backbone.model, {}

    def stop(module, inputs, output):
        kept["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    was = labeller.training
    labeller.eval()
    handle = enc.encoder.layers[layer - 1].register_forward_hook(stop)
    try:
        with torch.no_grad():
            enc(backbone._prepare(wave))
    except _Stop:
        pass
    finally:
        handle.remove()
        labeller.train(was)
    return kept["h"]


def file_mask_embedding(source):
    """The mask embedding the encoder's source file holds (transformers' ``masked_spec_embed``,
    AVES' ``mask_generator.mask_embedding``), or None (none in the file, or a file not found)."""
    import os

    import torch

    name, path = str((source or {}).get("name") or ""), (source or {}).get("cache_path")
    if name.startswith("aves:") and path and os.path.isfile(path):
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return sd.get("mask_generator.mask_embedding") if isinstance(sd, dict) else None
    if not name.startswith("hf:"):
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        if path:
            file = os.path.join(path, fname)
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                file = try_to_load_from_cache(name[3:], fname)
            except Exception:  # noqa: BLE001 - not in the cache: no file to read
                file = None
        if not isinstance(file, str) or not os.path.isfile(file):
            continue
        if fname.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, "pt") as f:
                key = next((k for k in f.keys() if k.split(".")[-1] == "masked_spec_embed"), None)
                return f.get_tensor(key) if key else None
        sd = torch.load(file, map_location="cpu", weights_only=True)
        return next((v for k, v in sd.items() if k.split(".")[-1] == "masked_spec_embed"), None)
    return None


@register
class HuBERT(Method):
    name, heads, outputs = "hubert", (HEAD,), ("z", "frames", "mask", "wave", "pen")
    teacher = {LABELLER: ("backbone",)}  # frozen at the start: never moved
    addon_input = "mean+std pooled last hidden state of the two crops' masked pass"
    view_recipe = dict(n_large=2)  # audio folders only: AudioViews' two crops (data.audio.*)
    e2mc_defaults = (10.0, 1.0, "sigmoid")  # e2mc's choice (VICReg's): the E2MC paper has no HuBERT runs
    paper_eps = 1e-7  # likewise
    options = {
        "kmeans_k": Option(500, 2, help="k-means clusters (HuBERT's 2nd/3rd iterations: 500)"),
        "kmeans_layer": Option(0, 0, help="transformer layer labelled by k-means; 0: half the depth (6 of 12)"),
        "kmeans_batches": Option(20, 1, help="training batches whose frames the k-means is fitted on"),
        "kmeans_max_frames": Option(100000, 1, help="at most this many of their frames (a seeded random subset)"),
        "mask_prob": Option(0.8, 0, lo_open=True, hi=1, help="HuBERT's mask_prob (span starts x length)"),
        "mask_length": Option(10, 1, help="frames per masked span"),
        "logit_temp": Option(0.1, 0, lo_open=True, help="cosine logits divided by this"),
        "pred_masked_weight": Option(1.0, 0, help="cross-entropy weight of masked frames"),
        "pred_nomask_weight": Option(0.0, 0, help="cross-entropy weight of unmasked frames"),
        "feature_pen_weight": Option(10.0, 0, help="weight of the CNN features' squared mean (HuBERT base's 10)"),
    }
    state_key = "hubert_kmeans"

    # -- heads ------------------------------------------------------------------------------
    def default_head_sizes(self, in_dim):
        hidden = int(in_dim) // 2  # the backbone's embedding is mean + std of its frames
        return {"final_dim": 256 if hidden < 1024 else 768, "classes": int(self.options["kmeans_k"].default)}

    def build_heads(self, in_dim, sizes):
        return {HEAD: _modules()[0](int(in_dim) // 2, int(sizes["final_dim"]), int(sizes["classes"]))}

    def head_sizes_from_weights(self, heads):
        head = heads.get(HEAD) or {}
        emb = head.get("label_embs_concat")
        return {"classes": int(emb.shape[0]), "final_dim": int(emb.shape[1])} if emb is not None else {}

    def forward_heads(self, model, features, sizes, images):
        rec = getattr(getattr(model, HEAD), "masker", None)
        rec = rec.take() if rec is not None else {}
        out = {"z": list(features.split(sizes)), "wave": list(images.split(sizes))}
        if "frames" in rec:
            out.update(frames=list(rec["frames"].split(sizes)), mask=list(rec["mask"].split(sizes)), pen=[rec["pen"]])
        return out

    # -- loss and state ----------------------------------------------------------------------
    def build_criterion(self, cfg):
        from e2mc.criteria.hubert import HuBERTLoss

        m = cfg.method
        return HuBERTLoss(m.logit_temp, m.pred_masked_weight, m.pred_nomask_weight, m.feature_pen_weight)

    def base_loss(self, out, criterion, zs, ctx):
        import torch

        from e2mc.criteria.hubert import assign_clusters

        state = ctx.state
        if state is None or not state.fitted or not out.get("frames"):
            raise ConfigError(
                "HuBERT's loss needs the trainer's masked step and its k-means targets (fitted before the "
                "first step); with addon.cov_weight=auto give a number instead"
            )
        head = getattr(ctx.model, HEAD)
        wave = torch.cat(out["wave"])
        targets = assign_clusters(layer_features(getattr(ctx.model, LABELLER), wave, state.layer), state.centroids)
        frames, mask = torch.cat(out["frames"]), torch.cat(out["mask"])
        pen = torch.stack(out["pen"]).mean()
        proj = head.final_proj(frames.to(head.final_proj.weight.dtype))  # the frames of an autocast pass: bf16/fp16
        return criterion(proj, head.label_embs_concat, targets, mask, pen)

    def build_state(self, cfg, model, world_size, global_batch, log):
        """The k-means state; checks the encoder, sizes the label embeddings to ``kmeans_k``,
        takes the file's mask embedding for a head built from an encoder's file, arms the hooks."""
        import torch

        enc = encoder_of(model.backbone)
        if cfg.addon.name == "e2mc" and cfg.addon.cov_weight == "auto":
            raise ConfigError(
                "addon.cov_weight=auto measures the base loss before HuBERT's k-means targets exist; "
                "give a number (--set addon.cov_weight=1)"
            )
        depth, hidden = int(enc.config.num_hidden_layers), int(enc.config.hidden_size)
        layer, k = label_layer(cfg, depth), int(cfg.method.kmeans_k)
        head = getattr(model, HEAD)
        if head.label_embs_concat.shape[0] != k:
            fresh = torch.empty(k, head.label_embs_concat.shape[1], device=head.label_embs_concat.device)
            head.label_embs_concat = torch.nn.Parameter(torch.nn.init.uniform_(fresh))
            model.head_sizes["classes"] = k
        emb = file_mask_embedding(getattr(model.backbone, "pretrained_source", None))
        if emb is not None and tuple(emb.shape) == tuple(head.mask_emb.shape):
            with torch.no_grad():
                head.mask_emb.copy_(emb)
        masker = _modules()[2](head, cfg.method.mask_prob, cfg.method.mask_length)
        head.masker = masker
        enc.feature_projection.register_forward_hook(masker.projection_hook)
        enc.register_forward_hook(masker.output_hook)
        log(
            f"HuBERT masked prediction on a {type(enc).__name__} ({depth} layers, hidden {hidden}): targets are "
            f"k={k} k-means clusters of layer {layer} of the frozen start encoder; mask embedding "
            + ("the encoder file's" if emb is not None else "the head's (uniform when built fresh)")
        )
        state = _modules()[1](k, hidden, layer)
        state.log = log
        return state

    def save_state(self, state, per_device_batch):
        return {"centroids": state.centroids.detach().cpu().clone(), "fitted": state.fitted, "layer": state.layer}

    def load_state(self, state, saved, per_device_batch, log):
        if state is None or not saved or saved.get("centroids") is None:
            return
        c = saved["centroids"]
        if tuple(c.shape) != tuple(state.centroids.shape) or int(saved.get("layer", state.layer)) != state.layer:
            log(f"the stored k-means ({tuple(c.shape)}, layer {saved.get('layer')}) does not fit this run's: refitted")
            return
        state.centroids.copy_(c)
        state.fitted = bool(saved.get("fitted", True))

    def init_state(self, state, report, cfg, log):
        """A continuation of this method's run checkpoint keeps its centroids (the same iteration's
        targets) unless its heads were built fresh; otherwise they are fitted before the first step."""
        saved = getattr(report, "method_state", None) if report is not None else None
        if saved is not None and not getattr(report, "heads_built", None):
            self.load_state(state, saved, 0, log)
        if state.fitted:
            log(f"k-means: the file's centroids (k={state.centroids.shape[0]}, layer {state.layer}), not refitted")

    def before_training(self, ctx, batches):
        """Fit the k-means (rank 0, broadcast) unless the state holds centroids (resume: never refit)."""
        import numpy as np
        import torch

        from e2mc.distributed import all_reduce_sum, is_distributed, rank

        state, m = ctx.state, ctx.cfg.method
        if state.fitted:
            state.log("k-means: centroids restored from the checkpoint, not refitted")
            return
        k, want, dim = int(m.kmeans_k), int(m.kmeans_batches), int(state.centroids.shape[1])
        buf = torch.zeros(k * dim + 2, dtype=torch.float64, device=state.centroids.device)  # centroids, batches, frames
        if not is_distributed() or rank() == 0:
            feats, n, seed = [], 0, int(ctx.cfg.train.seed)
            per_batch = -(-int(m.kmeans_max_frames) // want)  # frames kept per batch (a seeded random subset)
            pick = np.random.default_rng(seed)
            for views in batches:
                h = torch.cat([layer_features(getattr(ctx.model, LABELLER), v, state.layer) for v in views])
                h = h.reshape(-1, h.shape[-1]).float().cpu()
                if len(h) > per_batch:
                    h = h[torch.from_numpy(np.sort(pick.choice(len(h), per_batch, replace=False)))]
                feats.append(h)
                n += 1
                if n >= want:
                    break
            x = torch.cat(feats).numpy() if feats else np.zeros((0, dim), np.float32)
            buf[-2], buf[-1] = n, len(x)
            if len(x) >= k:
                from sklearn.cluster import MiniBatchKMeans

                km = MiniBatchKMeans(n_clusters=k, random_state=seed, **FAIRSEQ_KMEANS).fit(x)
                buf[:-2] = torch.from_numpy(km.cluster_centers_.reshape(-1)).to(buf)
        all_reduce_sum(buf)  # rank 0's centroids and frame count on every rank
        rows, used = int(buf[-1].item()), int(buf[-2].item())
        if rows < k:
            raise ConfigError(
                f"k-means needs at least method.kmeans_k={k} frames but up to {want} batches gave {rows}; "
                "raise method.kmeans_batches (and method.kmeans_max_frames) or lower method.kmeans_k"
            )
        state.centroids.copy_(buf[:-2].reshape(k, dim).to(state.centroids))
        state.fitted = True
        short = f" of the {want} asked (method.kmeans_batches): the data holds no more" if used < want else ""
        state.log(
            f"k-means: {k} clusters fitted on {rows} frames of layer {state.layer} "
            f"({used} batch{'es' if used != 1 else ''}{short}; seed {ctx.cfg.train.seed})"
        )

    def before_forward(self, ctx):
        getattr(ctx.model, HEAD).masker.armed = True

    def describe(self, cfg):
        m = cfg.method
        layer = m.kmeans_layer or "round(depth / 2)"
        warm = getattr(cfg.train, "head_warmup_steps", 0)
        text = (
            f"masked prediction (mask_prob {m.mask_prob:g}, span {m.mask_length}) of k={m.kmeans_k} k-means targets of "
            f"layer {layer} of the frozen start encoder, fitted on up to {m.kmeans_batches} batches before the first step "
            "(saved in the checkpoints: a resume does not refit); the add-on sees the 2 crops' pooled embeddings"
        )
        if getattr(cfg, "mode", "pretrain") == "continue" and not warm:
            text += "; fresh heads are not warmed up: set train.head_warmup_steps (e.g. 500) to train them first"
        return text
