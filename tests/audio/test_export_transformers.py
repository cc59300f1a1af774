"""`e2mc export` of an audio encoder: by default (or `--to transformers`) the transformers
`save_pretrained` folder of its own class, which transformers' `AutoModel` loads with every weight
and the source's own config (SpecAugment, LayerDrop), checked against transformers itself."""

import json
import logging

import pytest
import torch

from e2mc.cli import main
from e2mc.errors import CheckpointError
from e2mc.models.checkpoints import load_model
from e2mc.models.export import export_model
from tests.audio.conftest import TINY

SETS = {
    "data.audio.segment_seconds": "0.5",
    "data.audio.crop_seconds": "0.25",
    "train.max_steps": "2",
    "train.probe_size": "8",
    "train.tensorboard": "false",
}


def _continue(src, data, out, method="vicreg"):
    sets = [a for k, v in SETS.items() for a in ("--set", f"{k}={v}")]
    args = ["continue", str(src), "--dataset", str(data), "--method", method, "--batch-size", "4", "--device", "cpu"]
    return main([*args, "--out", str(out), *sets])


def _source(folder):
    """A tiny Wav2Vec2Model with SpecAugment and LayerDrop settings of its own, and a feature
    extractor config that normalises, as `save_pretrained` and `FeatureExtractor.save_pretrained` write them."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.Wav2Vec2Config(**TINY, mask_time_prob=0.3, mask_time_length=4, layerdrop=0.07)
    tf.Wav2Vec2Model(config).save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True).save_pretrained(
        folder
    )
    return folder


def _loaded(folder):
    import transformers as tf

    model, info = tf.AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def test_a_vicreg_run_goes_back_as_its_encoder_folder(tmp_path, audio_dir, one_torch_thread):
    import transformers as tf

    src = _source(tmp_path / "w2v")
    run = tmp_path / "run"
    assert _continue(src, audio_dir, run) == 0
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0  # the original layout of an hf: source
    back = _loaded(out)
    assert type(back).__name__ == "Wav2Vec2Model"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2Model"]
    assert (config["mask_time_prob"], config["mask_time_length"], config["layerdrop"]) == (0.3, 4, 0.07)
    assert config["apply_spec_augment"] is True  # the source's, not e2mc's training overrides
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre == json.loads((src / "preprocessor_config.json").read_text())  # the source's own

    model, _ = load_model(run)
    ours = {k[len("backbone.model.") :]: v for k, v in model.state_dict().items() if k.startswith("backbone.model.")}
    start = tf.Wav2Vec2Model.from_pretrained(src)
    ours["masked_spec_embed"] = start.masked_spec_embed  # not trained by VICReg: the source's
    theirs = back.state_dict()
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], v) for k, v in ours.items())
    assert any(not torch.equal(start.state_dict()[k], v) for k, v in ours.items())  # the run's, not the start's
    x = torch.randn(2, 4000)
    fe = tf.AutoFeatureExtractor.from_pretrained(out)  # the exported folder's own preprocessing
    inputs = fe(list(x.numpy()), sampling_rate=16000, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        want = back(**inputs).last_hidden_state
        assert torch.allclose(model.backbone.hidden_states(x)[-1], want, atol=1e-5)

    again, report = load_model(out, method="vicreg")  # e2mc reads the folder back, by its path
    assert report.format == "hf" and all(
        torch.equal(again.backbone.state_dict()[k], v) for k, v in model.backbone.state_dict().items()
    )

    # an audio encoder has no torchvision layout; an image network has no transformers one: one line each
    assert main(["export", str(run), "--out", str(tmp_path / "model.pt")]) == 2  # a folder layout, a file's name
    assert not (tmp_path / "model.pt").exists()
    for layout in ("torchvision", "vicreg", "lightning"):  # image layouts (vicreg: the image VICReg repository's)
        assert main(["export", str(run), "--to", layout, "--out", str(tmp_path / "r.pth")]) == 2
        assert not (tmp_path / "r.pth").exists()
    with pytest.raises(CheckpointError, match="needs the quantizer of a --method wav2vec2 run"):
        export_model(model, load_model(run)[1], tmp_path / "w", format="wav2vec2")
    image, image_report = load_model("random:resnet_mini", method="vicreg")
    with pytest.raises(CheckpointError, match="writes audio encoders"):
        export_model(image, image_report, tmp_path / "img", format="transformers")
    assert not (tmp_path / "img").exists()


def test_a_source_without_a_mask_embedding_is_written_with_specaugment_off(tmp_path, caplog):
    """A Wav2Vec2Model saved without SpecAugment has no masked_spec_embed: a folder claiming
    SpecAugment would make transformers draw one at random, so the export says so and turns it off."""
    import transformers as tf

    torch.manual_seed(0)
    folder = tmp_path / "plain"
    tf.Wav2Vec2Model(tf.Wav2Vec2Config(**TINY, mask_time_prob=0.0, layerdrop=0.0)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["mask_time_prob"] = 0.05  # the same weights, now with a config that asks for SpecAugment
    (folder / "config.json").write_text(json.dumps(config))
    model, report = load_model(folder, method="vicreg")
    with caplog.at_level(logging.WARNING):
        out = export_model(model, report, tmp_path / "out")
    assert "holds a mask embedding" in caplog.text
    assert json.loads((out / "config.json").read_text())["mask_time_prob"] == 0.0
    assert "masked_spec_embed" not in _loaded(out).state_dict()


def test_a_run_outlives_its_source_folder(tmp_path, audio_dir, one_torch_thread):
    """A run checkpoint carries its encoder's config (and the source's mask embedding): after the
    source folder is moved away it still loads, resumes and exports; a checkpoint written before the
    record existed is still built from its source folder."""
    import shutil

    import transformers as tf

    src = _source(tmp_path / "w2v")
    run = tmp_path / "run"
    assert _continue(src, audio_dir, run) == 0
    moved = tmp_path / "moved"
    shutil.move(src, moved)
    assert main(["inspect", str(run)]) == 0
    sets = [a for k, v in {**SETS, "train.max_steps": "3"}.items() for a in ("--set", f"{k}={v}")]
    assert main(["continue", "--out", str(run), "--resume", *sets]) == 0
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    back = _loaded(out)
    start = tf.Wav2Vec2Model.from_pretrained(moved)
    assert torch.equal(back.masked_spec_embed, start.masked_spec_embed) and back.config.mask_time_prob == 0.3
    model, _ = load_model(run)
    assert all(torch.equal(back.state_dict()[k[len("backbone.model.") :]], v) for k, v in model.state_dict().items()
               if k.startswith("backbone.model."))  # fmt: skip

    # a checkpoint without the record (an older e2mc's) is built from its source folder, as before
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    ck.pop("encoder")
    torch.save(ck, tmp_path / "old.pt")
    from e2mc.models import audio

    audio._RECORDS.clear()
    with pytest.raises(CheckpointError, match="is not there"):
        load_model(tmp_path / "old.pt")
    shutil.move(moved, src)
    again, _ = load_model(tmp_path / "old.pt")
    assert torch.equal(again.backbone.model.feature_projection.projection.weight,
                       model.backbone.model.feature_projection.projection.weight)  # fmt: skip


def test_an_unreadable_encoder_record_is_one_line(tmp_path, audio_dir, one_torch_thread):
    """A checkpoint whose encoder record was edited (a model type transformers does not know)."""
    src = _source(tmp_path / "w2v")
    run = tmp_path / "run"
    assert _continue(src, audio_dir, run) == 0
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    ck["encoder"]["config"]["model_type"] = "no-such-model"
    torch.save(ck, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="encoder record is unreadable") as err:
        load_model(tmp_path / "edited.pt")
    assert "\n" not in str(err.value)
