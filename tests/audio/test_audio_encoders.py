"""transformers audio encoders and AVES as e2mc backbones (tiny models saved at test time)."""

import json

import pytest
import torch

from e2mc.errors import CheckpointError
from e2mc.models import aves
from e2mc.models.audio import AudioEncoder, pool_frames
from e2mc.models.checkpoints import load_model
from e2mc.models.export import export_model

from .conftest import tiny_encoder


@pytest.mark.parametrize("model_type", ["wav2vec2", "hubert", "wavlm", "data2vec-audio"])
def test_each_encoder_from_a_folder(tmp_path, model_type, one_torch_thread):
    folder = tiny_encoder(tmp_path / model_type, model_type)
    model, report = load_model(folder, method="vicreg")
    assert report.arch == f"hf:{folder}" and report.heads_built == ["projector"]
    enc = model.backbone
    assert isinstance(enc, AudioEncoder) and enc.out_dim == 32 and enc.sample_rate == 16000
    assert enc.model.config.layerdrop == 0 and "masked_spec_embed" not in enc.model.state_dict()
    enc.eval()
    x = torch.randn(3, 1600)
    states = enc.hidden_states(x)
    assert enc.layers() == ["features", "layer1", "layer2"] and len(states) == 3
    last = enc.model(x).last_hidden_state
    want = torch.cat([last.mean(1), last.std(1, unbiased=False)], 1)
    assert torch.allclose(enc(x), want, atol=1e-5) and torch.allclose(pool_frames(states[-1]), want, atol=1e-5)
    ref = type(enc.model).from_pretrained(folder).eval()
    assert torch.allclose(ref(x).last_hidden_state, last, atol=1e-6)  # the saved weights, not a fresh init
    out = model([x, x])
    assert out["z"][0].shape == (3, 128)


def test_hub_name_from_a_seeded_cache(tmp_path, monkeypatch):
    """A hub name reads huggingface_hub's cache offline (pre-seeded here: the layout a download leaves)."""
    src = tiny_encoder(tmp_path / "src")
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-w2v" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--someone--tiny-w2v" / "refs").mkdir()
    (cache / "models--someone--tiny-w2v" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    model, report = load_model("hf:someone/tiny-w2v", method="vicreg")
    assert report.arch == "hf:someone/tiny-w2v" and model.backbone.out_dim == 32
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE=1"):
        load_model("hf:someone/not-cached", method="vicreg")


def test_not_an_audio_model(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="e2mc's audio encoders are"):
        load_model(f"hf:{tmp_path / 'bert'}", method="vicreg")


def test_folder_report_and_missing_weights(tmp_path, capsys):
    """A folder's tensors the encoder does not hold are listed in e2mc's report (transformers' own
    load table stays silent); a folder that lacks an encoder weight is refused, not filled at random."""
    from safetensors.torch import load_file, save_file

    folder = tiny_encoder(tmp_path / "w2v")
    _, report = load_model(f"hf:{folder}", method="vicreg")
    assert report.dropped == ["masked_spec_embed"] and any("not part of the backbone" in n for n in report.notes)
    assert "LOAD REPORT" not in capsys.readouterr().err
    weights = next(folder.glob("*.safetensors"))
    state = load_file(weights)
    gone = next(k for k in state if k.startswith("encoder.layers.0.attention.q_proj.weight"))
    save_file({k: v for k, v in state.items() if k != gone}, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks 1 weight\(s\).*q_proj"):
        load_model(f"hf:{folder}", method="vicreg")


def _torchaudio_layout(state: dict, weight_norm_gv: bool) -> dict:
    """transformers HubertModel keys -> torchaudio wav2vec2_model keys, by import_huggingface.py's
    scheme (feature_extractor <- feature_extractor, encoder.feature_projection <- feature_projection,
    encoder.transformer <- encoder), plus a CTC head ``aux`` as an AVES-like file may hold."""
    out = {}
    for k, v in state.items():
        if k == "masked_spec_embed":
            continue
        if k.startswith("feature_projection."):
            k = "encoder." + k
        elif k.startswith("encoder."):
            k = "encoder.transformer." + k[len("encoder.") :]
        if weight_norm_gv:
            k = k.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v"
            )
        out[k] = v.clone()
    out["aux.weight"], out["aux.bias"] = torch.randn(5, 16), torch.randn(5)
    return out


@pytest.mark.parametrize("weight_norm_gv", [True, False])
def test_aves_torchaudio_layout(tmp_path, weight_norm_gv):
    args = {  # torchaudio wav2vec2_model's arguments, as AVES's JSON holds them
        "extractor_mode": "group_norm",
        "extractor_conv_layer_config": [[8, 10, 5], [8, 3, 2]],
        "extractor_conv_bias": False,
        "encoder_embed_dim": 16,
        "encoder_projection_dropout": 0.1,
        "encoder_pos_conv_kernel": 4,
        "encoder_pos_conv_groups": 2,
        "encoder_num_layers": 2,
        "encoder_num_heads": 2,
        "encoder_attention_dropout": 0.1,
        "encoder_ff_interm_features": 32,
        "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.1,
        "encoder_layer_norm_first": False,
        "encoder_layer_drop": 0.05,
        "aux_num_out": 5,
    }
    cfg = aves.hubert_config(args)
    assert (cfg.hidden_size, cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride) == (16, [8, 8], [10, 3], [5, 2])
    assert cfg.feat_extract_norm == "group" and not cfg.do_stable_layer_norm and cfg.feat_proj_dropout == 0.1
    assert cfg.layerdrop == 0.05
    from transformers import HubertModel

    torch.manual_seed(1)
    ref = HubertModel(cfg).eval()
    torch.save(_torchaudio_layout(ref.state_dict(), weight_norm_gv), tmp_path / "aves-tiny.torchaudio.pt")
    (tmp_path / "aves-tiny.torchaudio.model_config.json").write_text(json.dumps(args))
    model, report = load_model(f"aves:{tmp_path / 'aves-tiny.torchaudio.pt'}", method="vicreg")
    enc = model.backbone.eval()
    assert report.arch.startswith("aves:") and enc.out_dim == 32
    c = enc.model.config  # as a backbone: no SpecAugment, no LayerDrop (models.audio.TRAINING_OVERRIDES)
    assert c.layerdrop == 0 and c.mask_time_prob == 0 and "masked_spec_embed" not in enc.model.state_dict()
    assert model.backbone.pretrained_source["dropped"] == ["aux.weight", "aux.bias"]
    x = torch.randn(2, 1600)
    assert torch.allclose(enc.model(x).last_hidden_state, ref(x).last_hidden_state, atol=1e-6)
    # exported: a HubertModel folder with the file's LayerDrop; no mask embedding in the file, SpecAugment off
    out = export_model(model, report, tmp_path / "as_transformers")
    back, info = HubertModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert back.config.layerdrop == 0.05 and back.config.mask_time_prob == 0
    assert torch.allclose(back.eval()(x).last_hidden_state, ref(x).last_hidden_state, atol=1e-6)
    (tmp_path / "aves-tiny.torchaudio.model_config.json").write_text(json.dumps({**args, "encoder_num_layers": 3}))
    with pytest.raises(CheckpointError, match="does not fit its config"):
        load_model(f"aves:{tmp_path / 'aves-tiny.torchaudio.pt'}", method="vicreg")
    (tmp_path / "aves-tiny.torchaudio.model_config.json").unlink()
    with pytest.raises(CheckpointError, match="no AVES config next to"):
        load_model(f"aves:{tmp_path / 'aves-tiny.torchaudio.pt'}", method="vicreg")
