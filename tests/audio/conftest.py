"""Tiny audio encoders saved by transformers and folders of synthetic recordings, made at test time."""

import numpy as np
import pytest

pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

from tests.official.gen_fairseq import HF_TINY as TINY  # noqa: E402 - one tiny encoder config for the audio tests


def tiny_encoder(folder, model_type="wav2vec2"):
    """A tiny transformers audio encoder of ``model_type``, ``save_pretrained`` into ``folder``."""
    import torch
    import transformers as tf

    cfg_cls, cls = {
        "wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model),
        "hubert": (tf.HubertConfig, tf.HubertModel),
        "wavlm": (tf.WavLMConfig, tf.WavLMModel),
        "data2vec-audio": (tf.Data2VecAudioConfig, tf.Data2VecAudioModel),
    }[model_type]
    extra = {"num_buckets": 8, "max_bucket_distance": 16} if model_type == "wavlm" else {}
    torch.manual_seed(0)
    cls(cfg_cls(**TINY, **extra)).save_pretrained(folder)
    return folder


def tone(seconds, rate, freq, channels=1, amp=0.3, seed=0):
    """A sine (plus a little noise) of ``seconds`` at ``rate`` Hz, (samples, channels) float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    x = amp * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], 1).astype(np.float32)


@pytest.fixture
def encoder_dir(tmp_path):
    return tiny_encoder(tmp_path / "w2v")


@pytest.fixture
def audio_dir(tmp_path):
    """2 classes x 4 stereo wav files at 22.05 kHz, 1.2 s each."""
    root = tmp_path / "calls"
    for c in range(2):
        (root / f"caller{c}").mkdir(parents=True)
        for i in range(4):
            sf.write(root / f"caller{c}" / f"{i}.wav", tone(1.2, 22050, 300 + 200 * c + 30 * i, 2, seed=i), 22050)
    return root
