"""fairseq wav2vec 2.0 / HuBERT checkpoints (written as fairseq saves them: tests/official/gen_fairseq.py)
loaded as transformers encoders, continued, inspected; bad files refused with one line."""

import collections
import csv
import io
import json
from argparse import Namespace

import pytest
import torch

from e2mc.cli import main
from e2mc.errors import CheckpointError
from e2mc.models import fairseq, omegapickle
from e2mc.models.audio import AudioEncoder
from e2mc.models.checkpoints import load_model
from e2mc.models.export import export_model
from tests.official import gen_fairseq as gen


def _same_hidden(enc, ref, x):
    got = enc.model(x, output_hidden_states=True).hidden_states
    want = ref(x, output_hidden_states=True).hidden_states
    return len(got) == len(want) and max((a - b).abs().max().item() for a, b in zip(got, want)) < 1e-6


@pytest.mark.parametrize("case", list(gen.CASES))
@pytest.mark.parametrize("ctc", [False, True])
def test_each_form_loads_as_its_reference(tmp_path, case, ctc, one_torch_thread):
    path, ref = gen.write(tmp_path, case, ctc=ctc)
    family, form, opts = gen.CASES[case]
    assert fairseq.looks_like(path)
    model, report = load_model(str(path), method="vicreg")
    enc = model.backbone.eval()
    assert isinstance(enc, AudioEncoder) and report.format == "fairseq" and report.arch == f"fairseq:{path}"
    assert type(enc.model).__name__ == ("Wav2Vec2Model" if family == "wav2vec2" else "HubertModel")
    assert enc.normalize == bool(opts.get("layer_norm_first")) and enc.sample_rate == 16000
    c, want = enc.model.config, gen.hf_config(case)
    for key in ("conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "do_stable_layer_norm"):
        a, b = c.to_dict()[key], want.to_dict()[key]
        assert (list(a) if isinstance(a, (list, tuple)) else a) == (list(b) if isinstance(b, (list, tuple)) else b), key
    assert c.layerdrop == 0 and "masked_spec_embed" not in enc.model.state_dict()
    torch.manual_seed(3)
    assert _same_hidden(enc, ref, torch.randn(2, 1600))  # every layer, not just the last
    heads = {"wav2vec2": ["quantizer.vars", "project_q.weight", "final_proj.weight", "mask_emb"]}
    heads["hubert"] = ["label_embs_concat", "final_proj.weight", "mask_emb"]
    prefix = "w2v_encoder.w2v_model." if ctc else ""
    expected = [prefix + k for k in heads[family] if not (ctc and not k.startswith("mask_emb"))]
    assert set(expected) <= set(report.dropped)
    if ctc:
        assert "w2v_encoder.proj.weight" in report.dropped
    text = report.summary()
    assert "format     : fairseq" in text and "dropped the pre-training/fine-tuning heads" in text
    assert "last_optimizer_state" in text  # said not to be carried over
    how = {"args": "args (argparse.Namespace)", "cfg": "; config from cfg)", "dictcfg": "pickled omegaconf DictConfig"}
    assert how[form] in text, text
    # exported: the transformers folder of its class, with the file's mask embedding and normalisation
    out = export_model(model, report, tmp_path / "as_transformers")
    import transformers as tf

    back, info = tf.AutoModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert torch.equal(back.masked_spec_embed, fairseq.read(str(path))["model"][prefix + "mask_emb"])
    assert tf.AutoFeatureExtractor.from_pretrained(out).do_normalize == enc.normalize
    assert _same_hidden(enc, back.eval(), torch.randn(2, 1600))


def test_weight_norm_as_parametrizations_and_no_projection(tmp_path, one_torch_thread):
    """A file written by a fairseq on torch's parametrized weight norm; a model whose CNN width is the
    encoder's (no post_extract_proj: an identity projection, as fairseq's forward)."""
    path, ref = gen.write(tmp_path, "wav2vec2_large_cfg")
    state = torch.load(path, weights_only=True)
    renamed = collections.OrderedDict()
    for k, v in state["model"].items():
        k = k.replace("pos_conv.0.weight_g", "pos_conv.0.parametrizations.weight.original0")
        renamed[k.replace("pos_conv.0.weight_v", "pos_conv.0.parametrizations.weight.original1")] = v
    state["model"] = renamed
    torch.save(state, tmp_path / "param.pt")
    enc = load_model(str(tmp_path / "param.pt"), method="vicreg")[0].backbone.eval()
    x = torch.randn(2, 1600)
    assert _same_hidden(enc, ref, x)

    del state["model"]["post_extract_proj.weight"], state["model"]["post_extract_proj.bias"]
    proj = ref.feature_projection.projection
    with torch.no_grad():  # the reference gets fairseq's missing projection: none at all
        proj.weight.copy_(torch.eye(*proj.weight.shape))
        proj.bias.zero_()
    torch.save(state, tmp_path / "noproj.pt")
    with pytest.raises(CheckpointError, match="does not fit its own config"):  # 8 != 16 wide: a real gap
        load_model(str(tmp_path / "noproj.pt"), method="vicreg")


def test_identity_projection_when_widths_match(tmp_path, monkeypatch, one_torch_thread):
    opts = {**gen.CASES["hubert_dictcfg"][2], "conv_feature_layers": "[(16, 10, 5), (16, 3, 2)]"}
    monkeypatch.setitem(gen.CASES, "hubert_wide", ("hubert", "dictcfg", opts))
    monkeypatch.setitem(gen.HF_TINY, "conv_dim", (16, 16))
    ref = gen.hf_model("hubert_wide")
    state = gen.checkpoint("hubert_wide", ref)
    del state["model"]["post_extract_proj.weight"], state["model"]["post_extract_proj.bias"]
    buf = io.BytesIO()
    torch.save(state, buf, pickle_module=gen._PickleModule)
    path = tmp_path / "wide.pt"
    path.write_bytes(buf.getvalue())
    proj = ref.feature_projection.projection
    with torch.no_grad():
        proj.weight.copy_(torch.eye(16))
        proj.bias.zero_()
    model, report = load_model(str(path), method="vicreg")
    assert _same_hidden(model.backbone.eval(), ref, torch.randn(2, 1600))
    assert any("identity projection" in n for n in report.notes)


def test_the_dictconfig_is_read_as_data(tmp_path):
    cfg = {"model": {"_name": "hubert", "lst": [1, {"a": None}], "ns": Namespace(x=1)}, "task": {"normalize": True}}
    buf = io.BytesIO()
    torch.save({"args": None, "cfg": gen.dictconfig(cfg), "model": {}}, buf, pickle_module=gen._PickleModule)
    (tmp_path / "c.pt").write_bytes(buf.getvalue())
    got = fairseq.read(str(tmp_path / "c.pt"))
    assert isinstance(got["cfg"], omegapickle.Container)
    assert omegapickle.plain(got["cfg"]) == {**cfg, "model": {**cfg["model"], "ns": {"x": 1}}}


def _cfg_file(tmp_path, edit, name="edited.pt"):
    path, _ = gen.write(tmp_path, "wav2vec2_large_cfg")
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, tmp_path / name)
    return str(tmp_path / name)


class Payload:  # a class of the test module: a global no safe loader may import
    def __reduce__(self):
        return (print, ("ran",))


def test_bad_files_get_one_line(tmp_path, capsys):
    def other_model(s):
        s["cfg"]["model"] = {"_name": "transformer_lm", "decoder_layers": 2}

    def conformer(s):
        s["cfg"]["model"]["layer_type"] = "conformer"

    def ctc_without_args(s):
        s["cfg"]["model"] = {"_name": "wav2vec_ctc", "w2v_args": None}

    def bad_conv(s):
        s["cfg"]["model"]["conv_feature_layers"] = "__import__('os').system('true')"

    cases = {
        other_model: "is a fairseq 'transformer_lm' model; e2mc reads fairseq wav2vec2 and hubert",
        conformer: "uses layer_type 'conformer' .*cannot map .*pass the save_pretrained folder",
        ctc_without_args: "without its pre-training config \\(w2v_args\\); pass the pre-training checkpoint",
        bad_conv: "conv_feature_layers .* is not a list of \\(dim, kernel, stride\\)",
    }
    for edit, msg in cases.items():
        with pytest.raises(CheckpointError, match=msg) as err:
            load_model(_cfg_file(tmp_path, edit, f"{edit.__name__}.pt"), method="vicreg")
        assert "\n" not in str(err.value)

    path = _cfg_file(tmp_path, lambda s: s["extra_state"].update(hook=Payload()), "payload.pt")
    with pytest.raises(CheckpointError, match="names the Python global .*print"):
        load_model(path, method="vicreg")
    assert not capsys.readouterr().out  # nothing ran

    torch.save({"backbone.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="is not a fairseq checkpoint"):
        load_model(f"fairseq:{tmp_path / 'plain.pt'}", method="vicreg")
    good, _ = gen.write(tmp_path, "hubert_dictcfg")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:30000])
    assert fairseq.looks_like(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="cannot read .* as a PyTorch checkpoint"):
        load_model(str(tmp_path / "cut.pt"), method="vicreg")
    with pytest.raises(CheckpointError, match="fairseq checkpoint not found"):
        load_model(f"fairseq:{tmp_path / 'absent.pt'}", method="vicreg")


def test_continue_and_inspect_from_the_cli(tmp_path, audio_dir, capsys, one_torch_thread):
    path, _ = gen.write(tmp_path, "hubert_dictcfg")
    assert main(["inspect", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["format"] == "fairseq" and "label_embs_concat" in rep["dropped"] and rep["parameters"]["backbone"] > 0
    out = tmp_path / "run"
    args = [
        "continue", str(path), "--dataset", str(audio_dir), "--method", "vicreg", "--addon", "e2mc",
        "--batch-size", "4", "--device", "cpu", "--out", str(out),
        "--set", "data.audio.segment_seconds=0.5", "--set", "data.audio.crop_seconds=0.25",
        "--set", "train.max_steps=2", "--set", "train.head_warmup_steps=1", "--set", "train.log_every=1",
        "--set", "train.probe_size=8", "--set", "train.tensorboard=false",
    ]  # fmt: skip
    assert main(args) == 0
    train = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["phase"] == "train"]
    assert [r["step"] for r in train] == ["1", "2"] and all(r["addon.entropy"] != "nan" for r in train)
    model, report = load_model(out)  # the run checkpoint rebuilds the encoder from fairseq:<file>'s config
    assert report.arch == f"fairseq:{path}" and report.method == "vicreg"
    start = load_model(str(path), method="vicreg")[0].backbone.state_dict()
    assert any(not torch.equal(v, model.backbone.state_dict()[k]) for k, v in start.items())


def test_evaluate_and_compare_a_fairseq_file_per_layer(tmp_path, capsys, one_torch_thread):
    from tests.audio.test_audio_evaluate import _split_folder

    path, _ = gen.write(tmp_path, "wav2vec2_args")
    data, out = _split_folder(tmp_path / "calls"), tmp_path / "run"
    opts = ["--device", "cpu", "--set", "eval.audio.segment_seconds=0.5", "--set", "eval.audio.min_seconds=0.25"]
    cmd = ["evaluate", str(path), "--dataset", str(data), "--protocols", "knn", "--layers", "all", "--ks", "3"]
    assert main([*cmd, *opts, "--json", "--no-cache"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["meta"]["layers"] == ["features", "layer1", "layer2"] and res["meta"]["n_test"] == 18
    assert all(0.0 <= r["uar_k3"] <= 1.0 for r in res["knn"]["by_layer"].values())
    train = [
        "continue", str(path), "--dataset", str(data), "--method", "vicreg", "--batch-size", "4", "--device", "cpu",
        "--out", str(out), "--set", "data.audio.segment_seconds=0.5", "--set", "data.audio.crop_seconds=0.25",
        "--set", "train.max_steps=1", "--set", "train.head_warmup_steps=0",
        "--set", "train.probe_size=0", "--set", "train.tensorboard=false",
    ]  # fmt: skip
    assert main(train) == 0
    before_after = ["compare", str(path), str(out), "--dataset", str(data), "--protocols", "knn", "--layers", "all"]
    assert main([*before_after, "--ks", "3", *opts, "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "layers.png").is_file()


def test_feature_grad_mult_is_reported(tmp_path):
    path = _cfg_file(tmp_path, lambda s: s["cfg"]["model"].update(feature_grad_mult=0.1))
    report = load_model(path, method="vicreg")[1]
    assert any("feature_grad_mult=0.1; e2mc trains it with its full gradient" in n for n in report.notes)
    assert not any(
        "feature_grad_mult=" in n for n in load_model(str(gen.write(tmp_path, "hubert_dictcfg")[0]))[1].notes
    )


def test_a_legacy_torch_file(tmp_path, one_torch_thread):
    """The 2020 releases predate torch's zip format: the same checkpoint in the legacy format."""
    ref = gen.hf_model("wav2vec2_args")
    torch.save(gen.checkpoint("wav2vec2_args", ref), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert not (tmp_path / "old.pt").read_bytes().startswith(b"PK") and fairseq.looks_like(tmp_path / "old.pt")
    model, report = load_model(str(tmp_path / "old.pt"), method="vicreg")
    assert report.format == "fairseq" and _same_hidden(model.backbone.eval(), ref, torch.randn(2, 1600))
