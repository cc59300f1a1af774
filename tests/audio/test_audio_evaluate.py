"""Evaluation as the bioacoustics papers do it: per-layer mean+std pooled features, standardised,
kNN and linear probe per layer, UAR next to accuracy; `continue`'s hint evaluates an audio run."""

import json
import shlex

import numpy as np
import pytest
import soundfile as sf
import torch

from e2mc.cli import main
from e2mc.evaluation.uar import standardize, uar
from tests.audio.conftest import tone


def numpy_uar(pred, target):
    """Reference: for each class present in target, correct / support; then the plain mean."""
    pred, target = np.asarray(pred), np.asarray(target)
    return float(np.mean([np.mean(pred[target == c] == c) for c in np.unique(target)]))


def test_uar_against_a_numpy_reference():
    rng = np.random.default_rng(0)
    for n, c in ((50, 3), (400, 7), (9, 5)):
        target = rng.choice(c, size=n, p=np.arange(1, c + 1) / np.arange(1, c + 1).sum())  # imbalanced
        pred = np.where(rng.random(n) < 0.6, target, rng.integers(0, c + 1, n))  # a class never true too
        assert uar(torch.tensor(pred), torch.tensor(target)) == pytest.approx(numpy_uar(pred, target), abs=1e-12)
    # 9 of class 0 right, the 1 of class 1 wrong: accuracy 0.9, UAR 0.5
    assert uar(torch.zeros(10), torch.tensor([0] * 9 + [1])) == 0.5
    with pytest.raises(ValueError, match="as many predictions as targets"):
        uar(torch.zeros(3), torch.zeros(4))


def test_standardize_uses_the_training_statistics():
    train, test = torch.randn(100, 4) * 3 + 5, torch.randn(20, 4)
    a, b = standardize(train, test)
    assert torch.allclose(a.mean(0), torch.zeros(4), atol=1e-5) and torch.allclose(a.std(0), torch.ones(4), atol=1e-5)
    assert torch.allclose(b, (test - train.mean(0)) / train.std(0), atol=1e-5)  # not the test set's own


def _split_folder(root, rate=16000):
    """train/test x 2 callers x 3 clips: 1.3 s each (two 0.5 s segments and a 0.3 s piece)."""
    for split, off in (("train", 0), ("test", 3)):
        for c in range(2):
            (root / split / f"caller{c}").mkdir(parents=True)
            for i in range(3):
                x = tone(1.3, rate, 300 + 250 * c + 20 * (i + off), seed=i + off)
                sf.write(root / split / f"caller{c}" / f"{i}.wav", x, rate)
    return root


def test_per_layer_features_equal_pooled_hidden_states(encoder_dir, tmp_path, one_torch_thread):
    from e2mc.data.datasets import build_dataset
    from e2mc.evaluation.api import audio_options
    from e2mc.evaluation.layerfeatures import extract_layer_features
    from e2mc.evaluation.layers import resolve_layers
    from e2mc.evaluation.settings import EvalSettings
    from e2mc.models.audio import pool_frames
    from e2mc.models.checkpoints import load_model

    model, _ = load_model(encoder_dir, method="vicreg")
    st = EvalSettings().with_overrides({"eval.audio.segment_seconds": 0.5, "eval.audio.min_seconds": 0.25})
    ds = build_dataset(str(_split_folder(tmp_path / "calls")), "train", audio=audio_options(model, st))
    assert len(ds) == 6 * 3 and sorted(set(ds.lengths.tolist())) == [4800, 8000]  # 2 whole + the 0.3 s piece
    layers = resolve_layers(model.backbone, "all")
    assert [la.name for la in layers] == ["features", "layer1", "layer2"] and layers[-1].final
    feats = extract_layer_features(model, ds, layers, batch_size=5, use_cache=False, cache_dtype="float32")
    with torch.no_grad():
        hidden = model.eval().backbone.hidden_states(ds.images)  # eval mode: no dropout, as extraction
    for la, h in zip(layers, hidden):
        assert torch.allclose(torch.as_tensor(np.asarray(feats[la.name]["backbone"])), pool_frames(h), atol=1e-5)
    assert not model.backbone.keep_hidden  # the taps switched it off again
    with pytest.raises(Exception, match="layer 'layer9' is not a layer of this audio backbone"):
        resolve_layers(model.backbone, "layer9")


def test_continue_then_its_hint_evaluates_per_layer(encoder_dir, tmp_path, capsys, one_torch_thread):
    data, out = _split_folder(tmp_path / "calls"), tmp_path / "run"
    args = [
        "continue", str(encoder_dir), "--dataset", str(data), "--method", "vicreg", "--addon", "e2mc",
        "--batch-size", "4", "--device", "cpu", "--out", str(out),
        "--set", "data.audio.segment_seconds=0.5", "--set", "data.audio.crop_seconds=0.25",
        "--set", "train.max_steps=1", "--set", "train.head_warmup_steps=0",
        "--set", "train.probe_size=0", "--set", "train.tensorboard=false",
    ]  # fmt: skip
    assert main(args) == 0
    done = capsys.readouterr().out.strip().splitlines()[-1]
    hint = done.split("(next: ", 1)[1].rstrip(")")
    assert "--layers all" in hint and "eval.audio.segment_seconds=0.5" in hint and "min_seconds=0.25" in hint
    cmd = shlex.split(hint)[1:] + ["--device", "cpu", "--ks", "3", "--json", "--no-cache"]
    assert main(cmd) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["meta"]["layers"] == ["features", "layer1", "layer2"] and res["meta"]["standardized"] is True
    assert res["meta"]["n_train"] == res["meta"]["n_test"] == 18
    for proto, keys in (("knn", ("top1_k3", "uar_k3")), ("linear", ("top1", "uar"))):
        for layer, r in res[proto]["by_layer"].items():
            assert all(0.0 <= r[k] <= 1.0 for k in keys), (proto, layer, r)
    # before (the save_pretrained folder itself) vs after, per layer, with the report's layer curve
    before_after = ["compare", str(encoder_dir), str(out), *cmd[2:-2], "--out", str(tmp_path / "cmp")]
    assert main(before_after) == 0 and (tmp_path / "cmp" / "layers.png").is_file()
    assert "uar_k3 w2v" in capsys.readouterr().out
    assert main([*cmd[:-2], "--set", "eval.audio.min_seconds=2"]) == 2  # checked: one line, what to do
    assert "eval.audio.min_seconds=2.0 is longer than eval.audio.segment_seconds=0.5" in capsys.readouterr().err
