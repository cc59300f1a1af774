"""`--method hubert`: HuBERT's masked prediction of k-means targets on tiny encoders of each family."""

import csv

import pytest
import torch

from e2mc.cli import main
from e2mc.config import load_config
from e2mc.methods import METHODS
from e2mc.models.checkpoints import load_model
from tests.audio.conftest import tiny_encoder

SETS = {
    "data.audio.segment_seconds": "0.5",
    "data.audio.crop_seconds": "0.25",
    "train.log_every": "1",
    "train.probe_size": "8",
    "train.tensorboard": "false",
    "method.kmeans_k": "8",
    "method.kmeans_batches": "2",
}


def _args(encoder, data, out, steps, **sets):
    pairs = [a for k, v in {**SETS, "train.max_steps": str(steps), **sets}.items() for a in ("--set", f"{k}={v}")]
    return ["continue", str(encoder), "--dataset", str(data), "--method", "hubert", "--addon", "e2mc",
            "--batch-size", "4", "--device", "cpu", "--out", str(out), *pairs]  # fmt: skip


def _ckpt(run):
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def _rows(run, phase="train"):
    return [r for r in csv.DictReader(open(run / "metrics.csv")) if r["phase"] == phase]


def test_continue_a_tiny_hubert_with_e2mc_and_resume(tmp_path, audio_dir, one_torch_thread, capsys):
    enc = tiny_encoder(tmp_path / "hubert", "hubert")
    run = tmp_path / "run"
    assert main(_args(enc, audio_dir, run, 2, **{"train.head_warmup_steps": "1"})) == 0
    err = capsys.readouterr().err
    assert "HuBERT masked prediction on a HubertModel (2 layers, hidden 16)" in err and "k=8" in err
    assert "k-means: 8 clusters fitted on" in err and "of layer 1" in err  # half of 2 layers
    assert "a resume does not refit" in err  # the start summary says so
    train = _rows(run)
    assert [r["step"] for r in train] == ["1", "2"] and len(_rows(run, "warmup")) == 1
    for r in train:  # the masked frames' cross-entropy and E2MC both ran, finite
        assert 0 < float(r["base.masked"]) < 10 and float(r["addon.entropy"]) == float(r["addon.entropy"])
        assert 0.3 < float(r["base.masked_frames"]) < 0.9  # mask_prob 0.8 of spans of 10 frames
    first = _ckpt(run)
    cents = first["hubert_kmeans"]["centroids"]
    assert cents.shape == (8, 16) and torch.isfinite(cents).all() and first["head_sizes"]["classes"] == 8

    # the labeller is the start encoder, frozen; the encoder itself was trained
    fresh, _ = load_model(enc, method="hubert", head_sizes={"classes": 8})
    start = fresh.backbone.state_dict()
    model = first["model"]
    assert all(torch.equal(model[f"label_model.backbone.{k}"], v) for k, v in start.items())
    assert any(not torch.equal(model[f"backbone.{k}"], v) for k, v in start.items())

    # a resume restores the centroids bit for bit and does not refit them
    assert main([*_args(enc, audio_dir, run, 3, **{"train.head_warmup_steps": "1"}), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "centroids restored from the checkpoint, not refitted" in err and "clusters fitted" not in err
    assert torch.equal(_ckpt(run)["hubert_kmeans"]["centroids"], cents)
    assert [r["step"] for r in _rows(run)] == ["1", "2", "3"]

    # continuing this run's checkpoint continues its iteration: the same labeller and centroids
    more = tmp_path / "more"
    assert main(_args(run, audio_dir, more, 1)) == 0
    assert "k-means: the file's centroids (k=8, layer 1), not refitted" in capsys.readouterr().err
    assert torch.equal(_ckpt(more)["hubert_kmeans"]["centroids"], cents)
    assert all(torch.equal(_ckpt(more)["model"][k], v) for k, v in model.items() if k.startswith("label_model."))

    # the same seed fits the same centroids (fairseq's MiniBatchKMeans, seeded)
    again = tmp_path / "again"
    assert main(_args(enc, audio_dir, again, 1, **{"train.head_warmup_steps": "1"})) == 0
    assert torch.equal(_ckpt(again)["hubert_kmeans"]["centroids"], cents)

    # the wav2vec2 layout is not a HuBERT folder: refused, not written with weights transformers drops
    capsys.readouterr()
    out = tmp_path / "as_wav2vec2"
    assert (
        main(["export", str(run), "--to", "wav2vec2", "--method", "wav2vec2", "--fresh-heads", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "is a 'hubert' model" in err and "wav2vec 2.0 encoders only" in err and not out.exists(), err
    # its own layout: a HubertModel folder, with the mask embedding HuBERT's objective trained
    assert "--to transformers" in err
    assert main(["export", str(run), "--out", str(out)]) == 0
    import transformers as tf

    back, info = tf.HubertModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    trained = _ckpt(run)["model"]
    assert torch.equal(back.masked_spec_embed, trained["hubert_head.mask_emb"])
    assert all(
        torch.equal(v, trained[f"backbone.model.{k}"]) for k, v in back.state_dict().items() if k != "masked_spec_embed"
    )


@pytest.mark.parametrize("family,precision", [("wav2vec2", "bf16"), ("wavlm", "fp32"), ("data2vec-audio", "fp32")])
def test_every_audio_family_continues_with_masked_prediction(
    family, precision, tmp_path, audio_dir, one_torch_thread, capsys
):
    """bf16: the masked pass's frames come out of autocast in bf16, the head is float32."""
    enc = tiny_encoder(tmp_path / family, family)
    run = tmp_path / "run"
    sets = {"method.kmeans_layer": "2", "train.precision": precision, "method.kmeans_max_frames": "1000"}
    assert main(_args(enc, audio_dir, run, 1, **sets)) == 0
    err = capsys.readouterr().err
    assert "of layer 2 of the frozen start encoder" in err and "set train.head_warmup_steps" in err
    assert "k-means: 8 clusters fitted on 1000 frames of layer 2" in err  # 500 of each batch's 3192
    (row,) = _rows(run)
    assert 0 < float(row["base.masked"]) < 10


def _built(enc, **sets):
    cfg = load_config(None, ["method.name=hubert", "mode=continue", *[f"{k}={v}" for k, v in sets.items()]])
    model, _ = load_model(enc, method="hubert")
    state = METHODS["hubert"].build_state(cfg, model, 1, 4, lambda msg: None)
    return cfg, model, state


def test_the_mask_embedding_comes_from_the_file_and_replaces_the_masked_frames(tmp_path):
    import transformers as tf

    enc = tiny_encoder(tmp_path / "hubert", "hubert")
    file_emb = tf.HubertModel.from_pretrained(enc).masked_spec_embed.detach()  # the config's mask_time_prob > 0
    _, model, _ = _built(enc)
    head = model.hubert_head
    assert torch.equal(head.mask_emb.detach(), file_emb)
    seen = {}
    encoder = model.backbone.model.encoder
    encoder.register_forward_pre_hook(lambda m, args: seen.update(h=args[0].detach().clone()))
    model.eval()
    wave = torch.randn(3, 4000)
    with torch.no_grad():
        model.backbone(wave)  # not armed: no masking
        plain = seen["h"]
        head.masker.armed = True
        model.backbone(wave)
    rec = head.masker.take()
    mask = rec["mask"]
    assert mask.any() and not mask.all() and rec["frames"].shape[:2] == mask.shape
    assert torch.equal(seen["h"][mask], file_emb.expand(int(mask.sum()), -1))
    assert torch.equal(seen["h"][~mask], plain[~mask])
    assert not head.masker.armed  # one pass per arming: evaluation and probes are never masked


def test_the_label_pass_is_the_layer_output_of_the_frozen_start(tmp_path):
    from e2mc.methods.hubert import layer_features

    enc = tiny_encoder(tmp_path / "hubert", "hubert")
    _, model, _ = _built(enc)
    model.train()
    wave = torch.randn(2, 4000)
    got = layer_features(model.label_model, wave, 1)
    model.backbone.eval()
    with torch.no_grad():
        want = model.backbone.hidden_states(wave)[1]
    assert torch.allclose(got, want, atol=1e-6) and model.label_model.training  # its mode is restored


def test_bad_settings_are_one_line_errors(tmp_path, audio_dir, one_torch_thread, capsys):
    enc = tiny_encoder(tmp_path / "hubert", "hubert")
    cases = [
        ({"method.kmeans_layer": "5"}, "method.kmeans_layer=5 but the encoder has 2 transformer layers; give 1..2"),
        ({"addon.cov_weight": "auto"}, "give a number (--set addon.cov_weight=1)"),
        ({"method.kmeans_k": "100000"}, "frames but up to 2 batches gave 6384; raise method.kmeans_batches"),
        ({"method.kmeans_max_frames": "6"}, "needs at least method.kmeans_k=8 frames but up to 2 batches gave 6;"),
    ]
    for i, (sets, want) in enumerate(cases):
        assert main(_args(enc, audio_dir, tmp_path / f"r{i}", 1, **sets)) == 2
        assert want in capsys.readouterr().err.strip().splitlines()[-1]
    args = ["continue", "random:resnet_mini", "--dataset", "digits", "--method", "hubert", "--batch-size", "8",
            "--device", "cpu", "--set", "train.max_steps=1", "--out", str(tmp_path / "img")]  # fmt: skip
    assert main(args) == 2
    assert "method hubert continues a speech or bioacoustic encoder" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, audio_dir):
    """Rank 0 fits the k-means and broadcasts it; DDP sees a gradient for every trainable parameter."""
    from tests.test_cli_torchrun import torchrun

    enc = tiny_encoder(tmp_path / "hubert", "hubert")
    out = tmp_path / "ddp"
    args = _args(enc, audio_dir, out, 3, **{"train.head_warmup_steps": "1", "train.probe_size": "0"})
    args[args.index("--batch-size") + 1] = "2"
    proc = torchrun(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in _rows(out)] == ["1", "2", "3"]
    assert torch.isfinite(_ckpt(out)["hubert_kmeans"]["centroids"]).all()


def test_the_mask_embedding_is_read_from_aves_files_and_the_hub_cache(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from e2mc.methods.hubert import file_mask_embedding

    emb = torch.arange(16.0)
    aves_file = tmp_path / "aves.pt"  # torchaudio's HuBERT pre-training keys
    torch.save({"mask_generator.mask_embedding": emb, "encoder.x": torch.zeros(1)}, aves_file)
    assert torch.equal(file_mask_embedding({"name": f"aves:{aves_file}", "cache_path": str(aves_file)}), emb)
    snap = tmp_path / "hub" / "models--someone--tiny-hubert" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file({"masked_spec_embed": emb, "encoder.w": torch.zeros(2)}, str(snap / "model.safetensors"))
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert torch.equal(file_mask_embedding({"name": "hf:someone/tiny-hubert", "cache_path": None}), emb)
    folder = tmp_path / "plain"  # a folder whose file has no mask embedding (mask_time_prob 0)
    folder.mkdir()
    save_file({"encoder.w": torch.zeros(2)}, str(folder / "model.safetensors"))
    assert file_mask_embedding({"name": f"hf:{folder}", "cache_path": str(folder)}) is None
    assert file_mask_embedding({"name": "hf:someone/not-cached", "cache_path": None}) is None
    assert file_mask_embedding(None) is None
