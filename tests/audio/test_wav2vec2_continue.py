"""`e2mc continue <tiny Wav2Vec2ForPreTraining folder> --method wav2vec2 --addon e2mc`: the
pre-training heads come from the folder, the run trains and resumes, and `export --to wav2vec2`
writes a folder that transformers loads back with the same weights."""

import csv

import pytest
import torch

from e2mc.cli import main
from e2mc.models.checkpoints import load_model
from tests.audio.conftest import TINY, tiny_encoder

PRETRAINING = dict(
    codevector_dim=16, proj_codevector_dim=8, num_codevectors_per_group=12, num_codevector_groups=2,
    num_negatives=5, mask_time_prob=0.3, mask_time_length=4,
)  # fmt: skip


def tiny_pretraining(folder, **extra):
    """A tiny transformers ``Wav2Vec2ForPreTraining``, ``save_pretrained`` into ``folder``."""
    import transformers as tf

    torch.manual_seed(0)
    tf.Wav2Vec2ForPreTraining(tf.Wav2Vec2Config(**TINY, **{**PRETRAINING, **extra})).save_pretrained(folder)
    return folder


@pytest.fixture
def pretraining_dir(tmp_path):
    return tiny_pretraining(tmp_path / "w2v-pt")


def _args(src, data, out, steps=2):
    return [
        "continue", str(src), "--dataset", str(data), "--method", "wav2vec2", "--addon", "e2mc",
        "--batch-size", "4", "--device", "cpu", "--out", str(out),
        "--set", "data.audio.segment_seconds=0.5", "--set", "data.audio.crop_seconds=0.25",
        "--set", f"train.max_steps={steps}", "--set", "train.log_every=1",
        "--set", "train.probe_size=8", "--set", "train.tensorboard=false",
    ]  # fmt: skip


def test_the_folder_s_quantizer_becomes_the_heads(pretraining_dir):
    import transformers as tf

    model, report = load_model(pretraining_dir, method="wav2vec2")
    assert report.format == "wav2vec2" and report.heads_built == []
    assert report.heads == ["mask_embed", "quantizer", "project_hid", "project_q"]
    assert any("Wav2Vec2ForPreTraining heads" in n for n in report.notes)
    assert report.dropped == []  # what the heads took is not listed as dropped as well
    _, plain = load_model(f"hf:{pretraining_dir}", method="vicreg")  # another method: the heads are not the backbone's
    assert {k.split(".")[0] for k in plain.dropped} >= {"quantizer", "project_hid", "project_q"}
    ref = tf.Wav2Vec2ForPreTraining.from_pretrained(pretraining_dir)
    for h in ("quantizer", "project_hid", "project_q"):
        for k, v in getattr(ref, h).state_dict().items():
            assert torch.equal(getattr(model, h).state_dict()[k], v), (h, k)
    assert torch.equal(model.mask_embed.weight, ref.wav2vec2.masked_spec_embed)
    assert report.head_sizes == {
        "hidden": 16, "conv_dim": 8, "groups": 2, "per_group": 12, "codevector_dim": 16, "proj_dim": 8
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_a_source_without_a_quantizer_is_refused(kind, tmp_path, audio_dir, capsys):
    src = tiny_encoder(tmp_path / kind, kind)  # a Wav2Vec2Model / HubertModel folder
    assert main(_args(src, audio_dir, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quantizer" in err[0] and "--method vicreg" in err[0], err
    assert not list((tmp_path / "run").rglob("*.pt"))  # nothing trained, nothing written


def test_continue_resume_and_export(pretraining_dir, audio_dir, tmp_path, one_torch_thread):
    import transformers as tf

    out = tmp_path / "run"
    assert main(_args(pretraining_dir, audio_dir, out)) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    train = [r for r in rows if r["phase"] == "train"]
    assert [r["step"] for r in train] == ["1", "2"] and "warmup" not in [r["phase"] for r in rows]
    for r in train:  # the objective's terms and the add-on, finite
        assert 0 < float(r["base.contrastive"]) < 50 and 0 <= float(r["base.diversity"]) <= 1
        assert float(r["base.gumbel_temp"]) == 0.5 and float(r["addon.entropy"]) == float(r["addon.entropy"])
        assert 0 < float(r["base.masked"]) < 1
    model, report = load_model(out)
    assert report.method == "wav2vec2" and report.arch == f"hf:{pretraining_dir}"
    start, _ = load_model(pretraining_dir, method="wav2vec2")
    for part in ("backbone", "quantizer", "project_hid", "mask_embed"):
        a, b = getattr(start, part).state_dict(), getattr(model, part).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), part  # trained, not only carried

    more = [a if a != "train.max_steps=2" else "train.max_steps=3" for a in _args(pretraining_dir, audio_dir, out)]
    assert main([*more, "--resume"]) == 0
    rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["phase"] == "train"]
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    straight = tmp_path / "straight"  # 3 steps without a stop: the resumed run's step 3 is the same step
    assert main(_args(pretraining_dir, audio_dir, straight, steps=3)) == 0
    same = [r for r in csv.DictReader(open(straight / "metrics.csv")) if r["phase"] == "train"]
    assert [same[2][k] for k in ("loss", "base.contrastive", "addon")] == [
        rows[2][k] for k in ("loss", "base.contrastive", "addon")
    ]

    folder = tmp_path / "exported"
    assert main(["export", str(out), "--out", str(folder)]) == 0  # the original layout: the folder it came from
    assert main(["export", str(out), "--to", "wav2vec2", "--out", str(folder / "config.json")]) == 2  # not a folder
    back = tf.Wav2Vec2ForPreTraining.from_pretrained(folder)
    model, _ = load_model(out)
    ours = {
        f"wav2vec2.{k[len('backbone.model.') :]}": v for k, v in model.state_dict().items() if k.startswith("backbone.")
    }
    ours["wav2vec2.masked_spec_embed"] = model.mask_embed.weight
    ours.update(
        {k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("quantizer", "project_hid", "project_q")}
    )
    theirs = back.state_dict()
    assert set(ours) == set(theirs)
    for k, v in ours.items():
        assert torch.equal(theirs[k], v), k
    assert back.config.mask_time_prob == 0.3 and back.config.num_negatives == 5  # the source's config
    again, rep = load_model(folder, method="wav2vec2")  # and e2mc continues the exported folder too
    assert rep.format == "wav2vec2" and torch.equal(again.quantizer.codevectors, model.quantizer.codevectors)


@pytest.mark.slow
def test_torchrun_two_processes(pretraining_dir, audio_dir, tmp_path):
    """Under torchrun (2 gloo processes) every parameter, the quantizer and the mask embedding
    included, gets a gradient each step, so DDP runs past its second step."""
    from tests.test_cli_torchrun import torchrun

    out = tmp_path / "ddp"
    args = _args(pretraining_dir, audio_dir, out, steps=3)
    args[args.index("--batch-size") + 1] = "2"
    args[args.index("train.probe_size=8")] = "train.probe_size=0"
    proc = torchrun(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    train = [r for r in rows if r["phase"] == "train"]
    assert [r["step"] for r in train] == ["1", "2", "3"] and all(float(r["base.contrastive"]) > 0 for r in train)


def test_fresh_heads_are_explicit_and_warned(encoder_dir, audio_dir, tmp_path, capsys, one_torch_thread):
    """A random quantizer only on request: --fresh-heads on a run of another method, sizes that fit
    the encoder (a one-line error says which), and a warning in the log."""
    common = ["--set", "data.audio.segment_seconds=0.5", "--set", "data.audio.crop_seconds=0.25",
              "--set", "train.log_every=1", "--set", "train.tensorboard=false", "--set", "train.probe_size=0",
              "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    vic = tmp_path / "vic"
    assert main(["continue", str(encoder_dir), "--dataset", str(audio_dir), "--method", "vicreg", *common,
                 "--set", "train.max_steps=1", "--out", str(vic)]) == 0  # fmt: skip
    args = ["continue", str(vic), "--dataset", str(audio_dir), "--method", "wav2vec2", *common,
            "--set", "train.max_steps=1", "--set", "method.mask_time_prob=0.3", "--set", "method.mask_time_length=4"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "--fresh-heads" in capsys.readouterr().err  # the run's heads are VICReg's: a mismatch
    assert main([*args, "--fresh-heads", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--set model.head_sizes={conv_dim: 8, hidden: 16}" in err, err
    sizes = "model.head_sizes={conv_dim: 8, hidden: 16, per_group: 8, codevector_dim: 16, proj_dim: 8}"
    assert main([*args, "--fresh-heads", "--set", sizes, "--out", str(tmp_path / "c")]) == 0
    log = capsys.readouterr()
    assert "warning: the wav2vec 2.0 quantizer and projections are random" in log.out + log.err


def test_a_wav2vec2_run_resumes_and_exports_after_its_source_moved(pretraining_dir, audio_dir, tmp_path):
    """The objective's settings and the Wav2Vec2ForPreTraining export read the encoder's own config
    (the checkpoint's record), not the source folder: both used to fail once the folder was moved."""
    import shutil

    import transformers as tf

    out = tmp_path / "run"
    assert main(_args(pretraining_dir, audio_dir, out, steps=1)) == 0
    shutil.move(pretraining_dir, tmp_path / "moved")
    assert main(["continue", "--out", str(out), "--resume", "--set", "train.max_steps=2"]) == 0  # as advised
    folder = tmp_path / "exported"
    assert main(["export", str(out), "--out", str(folder)]) == 0  # the default: the wav2vec2 layout
    back = tf.Wav2Vec2ForPreTraining.from_pretrained(folder)
    assert back.config.mask_time_prob == 0.3 and back.config.num_negatives == 5  # the source's, carried
