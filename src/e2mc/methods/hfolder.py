"""transformers ``save_pretrained`` folders that export writes (the layouts of audio encoders):
``write_folder`` writes one atomically, ``preprocessor_json`` gives its preprocessor_config.json
(the source's, else one written from the encoder's sample rate and normalisation),
``published_config`` the encoder's config as its source publishes it. Generic: no method's own code."""

from __future__ import annotations

import os

from e2mc.errors import CheckpointError


def write_folder(obj: dict, path, error, layout: str):
    """Write a transformers ``save_pretrained`` folder at ``path``: ``obj``'s ``state_dict`` as
    model.safetensors, its ``config`` (JSON text) as config.json and its ``preprocessor`` (JSON
    text, when given) as preprocessor_config.json, each file atomically; returns ``path``."""
    from safetensors.torch import save_file

    from e2mc import fileio

    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file; export --to {layout} writes a folder: give a folder path")
    if not path.exists() and path.suffix.lower() in (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar"):
        raise CheckpointError(
            f"export --to {layout} writes a save_pretrained folder, and {path} reads as a file name: give a folder "
            f"path (e.g. {path.with_suffix('')}/), or --to e2mc / safetensors for one file"
        )
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in obj["state_dict"].items()}
    fileio.atomic_write(
        path / "model.safetensors",
        lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
        parents=True,
        error=error,
    )
    fileio.atomic_write_text(path / "config.json", obj["config"], error=error)
    if obj.get("preprocessor"):
        fileio.atomic_write_text(path / "preprocessor_config.json", obj["preprocessor"], error=error)
    return path


def source_preprocessor(arch: str) -> str | None:
    """The source's preprocessor_config.json text (sampling rate, do_normalize), or None."""
    source = os.path.expanduser(arch[3:])
    path = os.path.join(source, "preprocessor_config.json")
    if not os.path.isdir(source):
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(source, "preprocessor_config.json")
        except Exception:  # noqa: BLE001 - none published
            return None
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read()


def feature_extractor_json(encoder) -> str:
    """A ``preprocessor_config.json`` text (transformers' ``Wav2Vec2FeatureExtractor``) of an audio
    encoder's sample rate and normalisation (``models.audio.AudioEncoder``); an attention mask for
    layer-norm CNNs, as transformers advises (group-norm ones were trained without padding)."""
    from transformers import Wav2Vec2FeatureExtractor

    fe = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=encoder.sample_rate,
        padding_value=0.0,
        do_normalize=encoder.normalize,
        return_attention_mask=getattr(encoder.model.config, "feat_extract_norm", "group") == "layer",
    )
    return fe.to_json_string()


def preprocessor_json(meta: dict) -> str | None:
    """The preprocessor_config.json of an export's ``meta``: the ``hf:`` source's own, else one of the
    encoder's (``meta["encoder"]``) sample rate and normalisation, else None."""
    arch = str(meta.get("arch") or "")
    text = source_preprocessor(arch) if arch.startswith("hf:") else None
    encoder = meta.get("encoder")
    if text is None and encoder is not None and hasattr(encoder, "sample_rate"):
        text = feature_extractor_json(encoder)
    return text


def published_config(encoder):
    """A copy of an audio encoder's transformers config (``models.audio.AudioEncoder``: ``.model.config``
    as built, ``.published``) as its source publishes it: SpecAugment and LayerDrop as there, not
    e2mc's training overrides. Read from the encoder, not its source, which may be gone."""
    import copy

    config = copy.deepcopy(encoder.model.config)
    config.update(encoder.published)
    return config
