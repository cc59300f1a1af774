"""The Python API and the CLI of the training engine (one tiny step each)."""

import pytest
import torch

from e2mc.cli import main
from e2mc.errors import ConfigError
from e2mc.train.api import build_config, pretrain
from e2mc.train.run import load_checkpoint

TINY = [
    "data.dataset=digits",
    "data.image_size=8",
    "data.limit=128",
    "model.init=random:resnet_mini:8-16-32",
    "optim.batch_size=64",
    "optim.lr=0.05",
    "train.probe_size=16",
    "train.tensorboard=false",
]


def test_api_overrides_and_run(tmp_path):
    cfg = build_config("continue", None, model__init="random:resnet_mini", optim__lr=0.5, data__dataset="digits",
                       **{"addon.name": "vc"})  # fmt: skip
    assert cfg.mode == "continue" and cfg.optim.lr == 0.5 and cfg.addon.name == "vc"
    with pytest.raises(ConfigError, match="continue needs the data to continue on: --dataset"):
        build_config("continue", None, model__init="random:resnet_mini")  # not a run of e2mc's: was digits, silently
    kw = {k.replace(".", "__"): v for k, v in (o.split("=", 1) for o in TINY)}
    run = pretrain(None, **kw, train__max_steps=1, out__dir=str(tmp_path / "r"))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1


def test_cli_messages(tmp_path, capsys):
    assert main(["continue"]) == 2
    assert "needs a checkpoint" in capsys.readouterr().err
    assert main(["continue", str(tmp_path / "missing.pth")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "digits_vicreg_pretrian"]) == 2
    assert "Did you mean 'digits_vicreg_pretrain'" in capsys.readouterr().err
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    out = tmp_path / "never"  # the file is refused before the data (too small here) or the run folder
    assert (
        main(["continue", str(text), "--recipe", "digits_vicreg_e2mc", "--set", "data.limit=8", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "not a PyTorch/safetensors checkpoint (a text file)" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_pretrain_then_continue(tmp_path, capsys):
    sets = [a for o in TINY + ["model.head_sizes={projector: [64, 64]}"] for a in ("--set", o)]
    out = tmp_path / "p"
    assert main(["pretrain", *sets, "--set", "train.max_steps=1", "--out", str(out)]) == 0
    ckpt = out / "checkpoints" / "last.pt"
    out2 = tmp_path / "c"
    sets = [a for o in TINY if not o.startswith("model.init") for a in ("--set", o)]  # keep CHECKPOINT
    assert (
        main(
            [
                "continue",
                str(ckpt),
                *sets,
                "--set",
                "train.max_steps=1",
                "--addon",
                "e2mc",
                "--entropy-weight",
                "2",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    st = load_checkpoint(out2 / "checkpoints" / "last.pt")
    assert st["config"]["addon"]["entropy_weight"] == 2.0 and st["config"]["mode"] == "continue"
    assert st["epoch"] == 0 and st["source_format"] == "e2mc"  # the continued run counts from 0
    assert torch.isfinite(st["model"]["projector.0.weight"]).all()


def _sets(extra):
    return [a for o in TINY + ["model.head_sizes={projector: [64, 64]}", *extra] for a in ("--set", o)]


def test_cli_says_when_the_collapse_guard_stopped_the_run(tmp_path, capsys):
    """A run the guard stopped is not a finished one: its own line, exit status 4 (a job array or a
    script tells it from `done:`); a run the guard acted on but that finished says so on `done:`."""
    from e2mc.commands.train import GUARD_STOPPED

    destructive = ["optim.lr=50", "train.epochs=5", "train.max_steps=10", "train.guard.interval=2"]
    out = tmp_path / "stopped"
    rc = main(["pretrain", *_sets([*destructive, "train.guard.action=stop"]), "--out", str(out)])
    said = capsys.readouterr().out
    assert rc == GUARD_STOPPED == 4
    assert said.startswith("stopped by the collapse guard at step 2 (1 event,") and "done:" not in said
    assert "the last checkpoint is the best one (step 0)" in said and str(out / "guard_events.json") in said
    out = tmp_path / "lowered"  # the default action: the LR x 0.1 at each event, the run goes on to its end
    extra = ["train.guard.lr_factor=0.0001", "train.guard.max_rollbacks=9"]
    assert main(["pretrain", *_sets([*destructive, *extra]), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("done: pretrain") and "the collapse guard acted" in said and "10 steps" in said


def test_run_header_names_each_addon_own_settings(tmp_path, capsys):
    """E2MC's typed weights are E2MC's: another add-on's header line gives its own (addon.kwargs)."""
    from e2mc.commands.train import addon_text
    from e2mc.config import load_config

    recipe = "cifar10_dino_continue"  # holds E2MC's weights
    assert addon_text(load_config(recipe, ["addon.name=mmcr"])) == " + mmcr (weight 1)"
    assert addon_text(load_config(recipe, ["addon.name=mmcr", "addon.kwargs.weight=0.1"])) == " + mmcr (weight 0.1)"
    assert addon_text(load_config(recipe, [])) == " + e2mc (entropy_weight 10, cov_weight 1, transform sigmoid)"
    assert addon_text(load_config(recipe, ["addon.name=uniformity"])) == " + uniformity (weight 1, t 2)"
    assert main(["pretrain", *_sets(["train.max_steps=1", "addon.name=mmcr"]), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "loss   : vicreg + mmcr (weight 1)" in err and "at most 1 step " in err
