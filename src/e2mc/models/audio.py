"""Speech and bioacoustic encoders as e2mc backbones: waveform (N, samples) -> pooled embedding.

Archs (the string a run checkpoint stores, so the encoder can be rebuilt from it):

* ``hf:<folder or hub name>``: a Hugging Face transformers ``Wav2Vec2Model``, ``HubertModel``,
  ``WavLMModel`` or ``Data2VecAudioModel`` (chosen by the config's ``model_type``); a folder is a
  ``save_pretrained`` output (``config.json`` + weights), a hub name is downloaded through
  huggingface_hub into its cache (``HF_HUB_OFFLINE=1`` reads the cache only). A ``*ForPreTraining``
  / ``*ForCTC`` folder loads its encoder (transformers drops the rest).
* ``aves:<file.pt>``: AVES (a HuBERT saved as torchaudio's ``wav2vec2_model`` state dict) with its
  JSON config next to it (:mod:`e2mc.models.aves`), converted to transformers' ``HubertModel``.
* ``fairseq:<file.pt>``: a fairseq wav2vec 2.0 or HuBERT checkpoint (pre-training or CTC
  fine-tuning; :mod:`e2mc.models.fairseq`), its config read from the file's ``args``/``cfg``,
  converted to ``Wav2Vec2Model`` / ``HubertModel``; sample rate and ``normalize`` from its task.
  A fairseq file passed as a plain path is recognised (``checkpoints.load_model``).

:class:`AudioEncoder` returns the mean and standard deviation over frames of the last hidden state
(``out_dim = 2 x hidden``); ``hidden_states(x)`` gives every layer's frames (the CNN features after
the projection, then one per transformer layer), ``layers()`` their names, and
:func:`pool_frames` is the pooling, for per-layer evaluation. The feature extractor's
``do_normalize`` (``preprocessor_config.json``: zero mean, unit variance per utterance) is applied
in ``forward``, so the backbone takes raw waveforms at ``sample_rate``. transformers' own
SpecAugment masking is switched off (``TRAINING_OVERRIDES``: e2mc's audio views mask time, and
no ``masked_spec_embed`` parameter is made; a file's is dropped) and so is LayerDrop: under
torchrun DDP needs every trainable parameter in every step (the trainer wraps without
``find_unused_parameters``). ``check_input(backbone, info)`` refuses data the encoder cannot read
(images, another sample rate) with one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from e2mc.errors import CheckpointError, ConfigError

AUDIO_KINDS = ("hf", "aves", "fairseq")
MODEL_TYPES = {  # config.model_type -> transformers class name
    "wav2vec2": "Wav2Vec2Model",
    "hubert": "HubertModel",
    "wavlm": "WavLMModel",
    "data2vec-audio": "Data2VecAudioModel",
}
DEFAULT_RATE = 16000
# SpecAugment off (the views mask time; no masked_spec_embed parameter is made) and no LayerDrop
TRAINING_OVERRIDES = {"apply_spec_augment": False, "mask_time_prob": 0.0, "mask_feature_prob": 0.0, "layerdrop": 0.0}
STD_FLOOR = 1e-12  # variance floor of the std pooling (a constant frame sequence has a finite gradient)


def is_audio_arch(arch) -> bool:
    """True for ``hf:...`` / ``aves:...`` / ``fairseq:...`` archs."""
    return isinstance(arch, str) and arch.split(":", 1)[0] in AUDIO_KINDS and ":" in arch


def is_hf_folder(path) -> bool:
    """A ``save_pretrained`` folder of one of the supported audio encoders."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") in MODEL_TYPES
    except (OSError, ValueError):
        return False


def pool_frames(h: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation over frames: (N, F, H) -> (N, 2H)."""
    mean = h.mean(1)
    var = (h - mean.unsqueeze(1)).pow(2).mean(1)
    return torch.cat([mean, var.clamp_min(STD_FLOOR).sqrt()], 1)


class AudioEncoder(nn.Module):
    """A transformers audio encoder (``self.model``) with mean+std pooling; see the module docstring."""

    input_ndim = 2  # (N, samples)

    def __init__(
        self,
        model: nn.Module,
        *,
        sample_rate: int = DEFAULT_RATE,
        normalize: bool = False,
        source=None,
        published: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.published = dict(published or {})  # TRAINING_OVERRIDES' keys as the source has them (export)
        self._source_mask: tuple = ()  # (the source's mask embedding or None,) once read: source_mask
        self.sample_rate = int(sample_rate)
        self.normalize = bool(normalize)
        self.out_dim = 2 * int(model.config.hidden_size)
        self.pretrained_source = source
        self.keep_hidden = False  # per-layer evaluation: forward also keeps every layer's frames
        self.kept_hidden: tuple = ()
        self.frame_hook = None  # an objective's own encoder pass in training mode (see forward)

    def source_mask(self, arch: str):
        """The mask embedding (``masked_spec_embed``) of the source behind ``arch``, read once
        (:func:`source_mask_embedding`; from a checkpoint's record when built from one), or None."""
        if not self._source_mask:
            self._source_mask = (source_mask_embedding(arch),)
        return self._source_mask[0]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ConfigError(f"an audio encoder takes waveforms (N, samples), got shape {tuple(x.shape)}")
        if self.normalize:  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm
            x = (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True, unbiased=False) + 1e-7).sqrt()
        return x

    def layers(self) -> list[str]:
        """Names of ``hidden_states``' entries: ``features`` (projected CNN output), ``layer1``..``layerL``."""
        return ["features"] + [f"layer{i + 1}" for i in range(int(self.model.config.num_hidden_layers))]

    def hidden_states(self, x: torch.Tensor) -> tuple:
        """Every layer's frames (N, F, hidden), in the order of :meth:`layers`."""
        return self.model(self._prepare(x), output_hidden_states=True).hidden_states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled utterance embedding (N, 2 x hidden) of waveforms (N, samples); with
        ``keep_hidden`` set, ``kept_hidden`` holds :meth:`hidden_states`' frames of the same pass.
        In training mode with ``frame_hook`` set (an objective that masks frames itself, e.g.
        ``methods.wav2vec2``), ``frame_hook(self, waveforms) -> last hidden state`` runs the pass."""
        if self.frame_hook is not None and self.training:
            self.kept_hidden = ()
            return pool_frames(self.frame_hook(self, self._prepare(x)))
        if self.keep_hidden:
            self.kept_hidden = self.hidden_states(x)
            return pool_frames(self.kept_hidden[-1])
        self.kept_hidden = ()
        return pool_frames(self.model(self._prepare(x)).last_hidden_state)


def check_input(backbone: nn.Module, info) -> None:
    """ConfigError when the dataset (its ``DatasetInfo``) does not fit the backbone's input: images
    for an audio encoder, waveforms for an image backbone, or another sample rate."""
    audio_net = getattr(backbone, "input_ndim", 4) == 2
    audio_data = getattr(info, "modality", "image") == "audio"
    if audio_net and not audio_data:
        raise ConfigError(
            f"this audio encoder needs an audio folder (wav/flac/ogg/mp3 files in class folders), not {info.name!r}: "
            "pass it as --dataset (data.dataset)"
        )
    if audio_data and not audio_net:
        raise ConfigError(
            "an audio folder needs an audio encoder: continue hf:<folder or hub name>, a save_pretrained folder, aves:<file.pt> or a fairseq .pt"
        )
    if audio_net and info.sample_rate != backbone.sample_rate:
        raise ConfigError(
            f"the encoder reads {backbone.sample_rate} Hz audio but data.audio.sample_rate is {info.sample_rate}; "
            f"set --set data.audio.sample_rate={backbone.sample_rate}"
        )


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("audio encoders need transformers: pip install 'e2mc[audio]'") from None
    transformers.utils.logging.disable_progress_bar()
    return transformers


def hf_class(config, where: str):
    """The transformers encoder class of ``config`` (``MODEL_TYPES``); CheckpointError for another."""
    cls = MODEL_TYPES.get(getattr(config, "model_type", None))
    if cls is None:
        raise CheckpointError(
            f"{where} is a {getattr(config, 'model_type', '?')!r} model; e2mc's audio encoders are "
            f"{', '.join(MODEL_TYPES)} (transformers model_type)"
        )
    return getattr(_transformers(), cls)


def _preprocessing(source: str) -> tuple[int, bool]:
    """``(sampling_rate, do_normalize)`` from the feature extractor's config (16 kHz, False when absent)."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file() and not os.path.isdir(source):
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "preprocessor_config.json"))
        except Exception:  # noqa: BLE001 - no preprocessor config published: the defaults
            return DEFAULT_RATE, False
    if not path.is_file():
        return DEFAULT_RATE, False
    cfg = json.loads(path.read_text())
    return int(cfg.get("sampling_rate", DEFAULT_RATE)), bool(cfg.get("do_normalize", False))


def _hf_encoder(source: str, pretrained: bool) -> AudioEncoder:
    tf = _transformers()
    where = os.path.expanduser(source)
    if os.path.isabs(where) and not os.path.isdir(where):  # a local folder, as a run records it
        raise CheckpointError(
            f"the transformers folder {where} is not there (moved or deleted?): a run or checkpoint built on it "
            "reads its config.json from there; put the folder back, or a symbolic link to its new place at that path"
        )
    try:
        config = tf.AutoConfig.from_pretrained(where)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/HTTP errors
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read the transformers config of {source!r} ({first}); pass a save_pretrained folder "
            "or a hub name (online once, or HF_HUB_OFFLINE=1 with it in the Hugging Face cache)"
        ) from None
    cls = hf_class(config, source)
    published = _published(config)
    config.update(TRAINING_OVERRIDES)
    info: dict = {}
    if pretrained:
        model, info = _from_pretrained(tf, cls, where, config, source)
    else:
        model = cls(config)
    rate, normalize = _preprocessing(where)
    src = {"name": f"hf:{source}", "url": None, "cache_path": where if os.path.isdir(where) else None}
    if info.get("unexpected_keys"):  # e2mc's report lists them; transformers' own table is silenced
        src["dropped"] = sorted(info["unexpected_keys"])
        src["notes"] = [
            f"the folder's tensors outside the {cls.__name__} encoder are not part of the backbone "
            "(masked_spec_embed: e2mc switches SpecAugment off; pre-training heads, unless the method takes them)"
        ]
    return AudioEncoder(
        model, sample_rate=rate, normalize=normalize, source=src if pretrained else None, published=published
    )


def _published(config) -> dict:
    """``TRAINING_OVERRIDES``' keys as ``config`` (a source's, before e2mc's overrides) has them."""
    return {k: getattr(config, k) for k in TRAINING_OVERRIDES if hasattr(config, k)}


def source_mask_embedding(arch: str):
    """The mask embedding (transformers' ``masked_spec_embed``) that the file behind an audio arch
    holds, or None: a folder's or cached hub file's ``masked_spec_embed``, AVES'
    ``mask_generator.mask_embedding``, a fairseq checkpoint's ``mask_emb``."""
    from e2mc.methods.hubert import file_mask_embedding

    kind, _, source = str(arch).partition(":")
    where = os.path.expanduser(source)
    if kind == "fairseq":
        if not os.path.isfile(where):
            return None
        from e2mc.models import fairseq

        sd = fairseq.read(where).get("model")
        return next((v for k, v in (sd or {}).items() if k.split(".")[-1] == "mask_emb"), None)
    return file_mask_embedding({"name": str(arch), "cache_path": where if os.path.exists(where) else None})


def _from_pretrained(tf, cls, where: str, config, source: str):
    """``cls.from_pretrained`` with transformers' load table silenced; ``(model, loading info)``.
    A weight the encoder needs but the folder lacks is refused: transformers would initialise it at
    random and say so only in a log line."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(where, config=config, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load the weights of {source!r}: {exc}"[:300]) from None
    finally:
        hf_logging.set_verbosity(level)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(
            f"{source!r} lacks {len(missing)} weight(s) of its {cls.__name__} encoder (e.g. {missing[0]}); "
            "it is not a complete save_pretrained folder of that model: re-save it, or pass its checkpoint file"
        )
    return model, info


_RECORDS: dict[str, dict] = {}  # arch -> the encoder record an e2mc checkpoint carries (see remember)


def encoder_record(encoder: AudioEncoder, arch: str) -> dict:
    """What rebuilds ``encoder`` (of ``arch``) without its source folder or file, stored in e2mc
    checkpoints: its transformers config as built (e2mc's overrides applied), the published values
    of those overrides, its sample rate and normalisation, the source's mask embedding (export)."""
    mask = encoder.source_mask(arch)
    return {
        "config": json.loads(encoder.model.config.to_json_string()),
        "published": dict(encoder.published),
        "sample_rate": int(encoder.sample_rate),
        "normalize": bool(encoder.normalize),
        "mask_embedding": None if mask is None else mask.detach().cpu().clone(),
    }


def encoder_item(backbone, arch) -> dict:
    """``{"encoder": encoder_record(backbone, arch)}`` for an audio encoder, else ``{}``: the entry
    e2mc checkpoints (run and exported) carry."""
    return {"encoder": encoder_record(backbone, str(arch))} if isinstance(backbone, AudioEncoder) else {}


def remember(arch, record) -> None:
    """Build ``arch``'s encoder from ``record`` (an e2mc checkpoint's ``encoder``) when it is built
    to be filled from a checkpoint: the run's own config, so the checkpoint loads, resumes and exports
    after its source folder, file or hub cache is gone (or was overwritten)."""
    if is_audio_arch(arch) and isinstance(record, dict) and isinstance(record.get("config"), dict):
        _RECORDS[str(arch)] = record


def _from_record(record: dict) -> AudioEncoder:
    tf = _transformers()
    try:
        config = dict(record["config"])
        config = type(tf.AutoConfig.for_model(config.get("model_type", ""))).from_dict(config)
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError/KeyError/TypeError for a bad config
        raise CheckpointError(
            f"the checkpoint's encoder record is unreadable ({type(exc).__name__}: {str(exc)[:120]}); the file was "
            "edited or cut short: use another checkpoint of the run (checkpoints/epoch_*.pt)"
        ) from None
    model = hf_class(config, "the checkpoint's encoder record")(config)
    rate, normalize = int(record.get("sample_rate", DEFAULT_RATE)), bool(record.get("normalize", False))
    encoder = AudioEncoder(model, sample_rate=rate, normalize=normalize, published=record.get("published"))
    encoder._source_mask = (record.get("mask_embedding"),)
    return encoder


def build_audio_backbone(arch: str, pretrained: bool = False) -> AudioEncoder:
    """The encoder of an ``hf:``/``aves:``/``fairseq:`` arch; ``pretrained=False`` builds it from its
    config alone (random weights, to be filled from an e2mc checkpoint): the checkpoint's own record
    when one was read (:func:`remember`), else the source's config."""
    kind, _, source = arch.partition(":")
    if not source:
        raise ConfigError(
            f"{arch!r} names no encoder; write hf:<folder or hub name>, aves:<file.pt> or fairseq:<file.pt>"
        )
    if not pretrained and arch in _RECORDS:
        return _from_record(_RECORDS[arch])
    if kind == "hf":
        return _hf_encoder(source, pretrained)
    if kind == "fairseq":
        from e2mc.models import fairseq

        model, info = fairseq.load(source, weights=pretrained, overrides=TRAINING_OVERRIDES)
        src = info["source"] if pretrained else None
        return AudioEncoder(
            model,
            sample_rate=info["sample_rate"],
            normalize=info["normalize"],
            source=src,
            published=_published(info["config"]),
        )
    from e2mc.models import aves

    model, src = aves.load(source, weights=pretrained, overrides=TRAINING_OVERRIDES)
    published = _published(aves.hubert_config(json.loads(aves.config_path(source).read_text())))
    return AudioEncoder(model, sample_rate=DEFAULT_RATE, normalize=False, source=src, published=published)


TINY_WAV2VEC2 = dict(  # the audio demo's encoder: 80x down-sampling (200 frames/s at 16 kHz), 2 layers
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32, 32),
    conv_kernel=(10, 4, 4),
    conv_stride=(5, 4, 4),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def save_tiny_wav2vec2(folder, seed: int = 0, **config) -> str:
    """A randomly initialised tiny transformers ``Wav2Vec2Model`` (``TINY_WAV2VEC2``, overridden by
    ``config``) written with ``save_pretrained`` into ``folder``; returns the folder."""
    tf = _transformers()
    torch.manual_seed(seed)
    tf.Wav2Vec2Model(tf.Wav2Vec2Config(**{**TINY_WAV2VEC2, **config})).save_pretrained(str(folder))
    return str(folder)
