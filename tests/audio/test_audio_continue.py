"""`e2mc continue <tiny wav2vec2> --dataset <folder of wav files> --method vicreg --addon e2mc`, 2 steps."""

import csv

import pytest
import torch

from e2mc.cli import main
from e2mc.models.checkpoints import load_model


def test_continue_a_tiny_wav2vec2_with_e2mc(encoder_dir, audio_dir, tmp_path, one_torch_thread):
    out = tmp_path / "run"
    args = [
        "continue", str(encoder_dir), "--dataset", str(audio_dir), "--method", "vicreg", "--addon", "e2mc",
        "--batch-size", "4", "--device", "cpu", "--out", str(out),
        "--set", "data.audio.segment_seconds=0.5", "--set", "data.audio.crop_seconds=0.25",
        "--set", "train.max_steps=2", "--set", "train.head_warmup_steps=1", "--set", "train.log_every=1",
        "--set", "train.probe_size=8", "--set", "train.tensorboard=false",
    ]  # fmt: skip
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    train = [r for r in rows if r["phase"] == "train"]
    assert [r["step"] for r in train] == ["1", "2"]
    assert all(float(r["addon.entropy"]) == float(r["addon.entropy"]) for r in train)  # E2MC ran, finite
    assert [r["phase"] for r in rows].count("warmup") == 1
    model, report = load_model(out)  # the run checkpoint rebuilds the encoder from its arch
    assert report.arch == f"hf:{encoder_dir}" and report.method == "vicreg"
    fresh, _ = load_model(encoder_dir, method="vicreg")
    moved = [k for k, v in fresh.backbone.state_dict().items() if not torch.equal(v, model.backbone.state_dict()[k])]
    assert moved  # the encoder was trained, not only the projector
    assert model.embed(torch.randn(2, 4000)).shape == (2, 32)
    more = [a if a != "train.max_steps=2" else "train.max_steps=3" for a in args]
    assert main([*more, "--resume"]) == 0  # resumed: the encoder rebuilt from the arch, its weights restored
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["step"] for r in rows if r["phase"] == "train"] == ["1", "2", "3"]


def test_data_that_does_not_fit_the_encoder(encoder_dir, audio_dir, tmp_path, capsys):
    common = ["--method", "vicreg", "--batch-size", "4", "--device", "cpu", "--set", "train.max_steps=1",
              "--set", "data.audio.segment_seconds=0.5", "--set", "data.audio.crop_seconds=0.25"]  # fmt: skip
    assert main(["continue", str(encoder_dir), "--dataset", str(audio_dir), *common, "--out", str(tmp_path / "a"),
                 "--set", "data.audio.sample_rate=8000"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        "reads 16000 Hz audio but data.audio.sample_rate is 8000" in err and "--set data.audio.sample_rate=16000" in err
    )
    assert (
        main(["continue", "random:resnet_mini", "--dataset", str(audio_dir), *common, "--out", str(tmp_path / "b")])
        == 2
    )
    assert "an audio folder needs an audio encoder" in capsys.readouterr().err
    assert main(["continue", str(encoder_dir), "--dataset", "digits", *common, "--out", str(tmp_path / "c")]) == 2
    assert "needs an audio folder" in capsys.readouterr().err
    assert main(["continue", str(encoder_dir), "--dataset", str(audio_dir), *common, "--method", "dino",
                 "--out", str(tmp_path / "d")]) == 2  # fmt: skip
    assert "audio views are two crops of one recording: use --method vicreg/" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes(encoder_dir, audio_dir, tmp_path):
    """Under torchrun (2 gloo processes) every encoder parameter gets a gradient each step (no
    SpecAugment embedding, no LayerDrop), so DDP runs past its second step."""
    from tests.test_cli_torchrun import torchrun

    out = tmp_path / "ddp"
    args = [
        "continue", encoder_dir, "--dataset", audio_dir, "--method", "vicreg", "--addon", "e2mc",
        "--batch-size", "2", "--device", "cpu", "--out", out,
        "--set", "data.audio.segment_seconds=0.5", "--set", "data.audio.crop_seconds=0.25",
        "--set", "train.max_steps=3", "--set", "train.head_warmup_steps=1", "--set", "train.log_every=1",
        "--set", "train.probe_size=0", "--set", "train.tensorboard=false",
    ]  # fmt: skip
    proc = torchrun(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["step"] for r in rows if r["phase"] == "train"] == ["1", "2", "3"]


def test_a_run_from_a_relative_folder_is_read_from_anywhere(encoder_dir, audio_dir, tmp_path, monkeypatch, capsys):
    """A run continued from ``./tiny`` (a relative save_pretrained folder) records where the folder
    is, not the relative name (which transformers would look up on the Hub from another directory);
    the run outlives the folder (its checkpoint carries the encoder's config); the folder itself,
    moved away, is named in one line."""
    monkeypatch.chdir(encoder_dir.parent)
    args = ["continue", encoder_dir.name, "--dataset", str(audio_dir), "--method", "vicreg", "--batch-size", "4"]
    args += ["--device", "cpu", "--out", str(tmp_path / "run"), "--set", "data.audio.segment_seconds=0.5"]
    args += ["--set", "data.audio.crop_seconds=0.25", "--set", "train.max_steps=1", "--set", "train.probe_size=0"]
    args += ["--set", "train.tensorboard=false", "--set", "train.head_warmup_steps=0"]
    assert main(args) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, report = load_model(tmp_path / "run")
    assert report.arch == f"hf:{encoder_dir}"  # absolute
    _, named = load_model(f"hf:../{encoder_dir.name}")
    assert named.arch == f"hf:{encoder_dir}"  # hf:<relative folder> too
    encoder_dir.rename(encoder_dir.with_name("moved"))
    assert main(["inspect", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["inspect", f"hf:{encoder_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{encoder_dir} is not there" in err and "put the folder back" in err, err


def test_an_audio_encoder_is_continued_with_adamw_at_a_small_lr_unless_told(encoder_dir, tmp_path):
    """The image methods' LARS at 0.2 collapsed a tiny wav2vec 2.0 encoder in 6 steps (backbone RankMe
    5.5 -> 1.1): an audio encoder without an optimiser or LR of the user's gets AdamW at 5e-5."""
    from e2mc.train.api import resolve_config

    out = f"out.dir={tmp_path / 'r'}", "data.dataset=digits"
    for init in (str(encoder_dir), f"hf:{encoder_dir}"):
        o = resolve_config("continue", None, [f"model.init={init}", "method.name=vicreg", *out]).optim
        assert (o.name, o.lr, o.weight_decay) == ("adamw", 5e-5, 0.01)
    o = resolve_config("continue", None, [f"model.init={encoder_dir}", "optim.lr=0.01", *out]).optim
    assert (o.name, o.lr) == ("lars", 0.01)  # the user's LR: the rest stays as configured
    o = resolve_config("continue", None, [f"model.init={encoder_dir}", "optim.name=sgd", *out]).optim
    assert o.name == "sgd"
    o = resolve_config("continue", None, ["model.init=random:resnet_mini", "method.name=vicreg", *out]).optim
    assert (o.name, o.lr) == ("lars", 0.2)  # images: unchanged


def test_relative_paths_are_recorded_absolute_and_resume_from_anywhere(encoder_dir, audio_dir, tmp_path, monkeypatch):
    """A new user's trial: a run started as `continue ../w2v --dataset ../calls/` from a sub-folder
    could not be resumed from elsewhere (config.yaml held the relative paths), and `calls/` vs `calls`
    counted as different settings."""
    import yaml

    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    sets = ["--set", "data.audio.segment_seconds=0.5", "--set", "data.audio.crop_seconds=0.25"]
    sets += ["--set", "train.probe_size=0", "--set", "train.tensorboard=false", "--set", "train.head_warmup_steps=0"]
    args = ["continue", f"../{encoder_dir.name}/", "--dataset", f"../{audio_dir.name}/", "--method", "vicreg"]
    args += ["--batch-size", "4", "--device", "cpu", "--out", "../run", *sets, "--set", "train.max_steps=1"]
    assert main(args) == 0
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["data"]["dataset"] == str(audio_dir)
    monkeypatch.chdir(tmp_path)
    assert main(["continue", "--out", "run", "--resume", "--set", "train.max_steps=2"]) == 0
    again = ["continue", str(encoder_dir), "--dataset", f"{audio_dir.name}/", "--method", "vicreg", "--batch-size", "4"]
    again += ["--device", "cpu", "--out", "run", "--resume", *sets, "--set", "train.max_steps=3"]
    assert main(again) == 0  # the same folder spelled another way is the same setting
