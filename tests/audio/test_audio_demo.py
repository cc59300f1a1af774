"""The offline audio demo, shortened: synthetic callers, a tiny wav2vec2, both arms, per-layer report."""

import dataclasses
import json

import numpy as np
import soundfile as sf

from e2mc.data.synthcalls import CALL_TYPES, vocalisation, voices, write_calls


def test_synthetic_calls_are_seeded_and_differ_by_caller(tmp_path):
    a, _ = (
        write_calls(tmp_path / "a", callers=3, clips=(2, 1), seed=4),
        write_calls(tmp_path / "b", callers=3, clips=(2, 1), seed=4),
    )
    files = sorted(p.relative_to(a) for p in (tmp_path / "a").rglob("*.wav"))
    assert len(files) == 3 * 3 and {f.parts[0] for f in files} == {"train", "test"}
    for f in files:  # the same seed writes the same samples
        assert np.array_equal(sf.read(tmp_path / "a" / f)[0], sf.read(tmp_path / "b" / f)[0])
    vs = voices(3, seed=4)
    assert len({v.f0 for v in vs}) == 3 and vs == voices(3, seed=4) and vs != voices(3, seed=5)
    x = vocalisation(vs[0], CALL_TYPES[0], 16000, 0.5, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (8000,) and 0.4 < np.abs(x).max() <= 0.5
    spectrum = np.abs(np.fft.rfft(vocalisation(vs[0], "flat", 16000, 1.0, np.random.default_rng(1))))
    peak = np.argmax(spectrum)  # a flat call's strongest line lies near one of the caller's harmonics
    assert min(abs(peak / (k * vs[0].f0) - 1) for k in range(1, 8)) < 0.15


def test_a_shortened_audio_demo(tmp_path, one_torch_thread):
    from e2mc.audiodemo import AudioDemoConfig, run_audio_demo

    cfg = AudioDemoConfig(
        out=tmp_path / "out", seeds=(0, 1), pretrain_epochs=2, continue_epochs=1, cache_dir=tmp_path / "cache",
        workers=1, data=dict(callers=2, clips=(4, 2), call_types=2, seconds=1.0),
        extra={"train.head_warmup_steps": 1, "optim.batch_size": 4},
    )  # fmt: skip
    res = run_audio_demo(cfg, log=lambda s: None)
    assert res["headline"]["metric"] == "linear/uar@layer2" and res["headline"]["n"] == 2
    assert set(res["arms"]) == {"vicreg", "vicreg+e2mc", "start"}
    assert {"knn/uar_k5@features", "linear/top1@layer1", "linear/uar@layer2"} <= set(res["arms"]["vicreg+e2mc"])
    assert (tmp_path / "out" / "layers.png").is_file() and json.loads((tmp_path / "out" / "results.json").read_text())
    assert "per layer" in (tmp_path / "out" / "report.md").read_text()
    again = run_audio_demo(
        dataclasses.replace(cfg, out=tmp_path / "out2"), log=lambda s: None
    )  # the start (calls, encoder, pre-training) is cached
    assert again["pretrain_cached"] and not res["pretrain_cached"]
