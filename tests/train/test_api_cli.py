"""The Python API and the CLI of the training engine (one tiny step each)."""

import torch

from e2mc.cli import main
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
    cfg = build_config("continue", None, model__init="random:resnet_mini", optim__lr=0.5, **{"addon.name": "vc"})
    assert cfg.mode == "continue" and cfg.optim.lr == 0.5 and cfg.addon.name == "vc"
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
