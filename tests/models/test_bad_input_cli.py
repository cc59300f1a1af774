"""Bad checkpoints are refused with a clear CheckpointError; the inspect/export CLI."""

import json
import os

import pytest
import torch

from e2mc.cli import main
from e2mc.errors import CheckpointError
from e2mc.models.checkpoints import load_model
from e2mc.models.model import SSLModel


@pytest.fixture()
def mini_ckpt(tmp_path):
    """A SimSiam-layout checkpoint of a tiny ResNet (fast)."""
    torch.manual_seed(0)
    m = SSLModel.build("simsiam", "resnet_mini:8-8-16")
    sd = m.state_dict()
    obj = {
        "state_dict": {f"module.encoder.{k[9:]}": v for k, v in sd.items() if k.startswith("backbone.")}
        | {f"module.encoder.fc.{k[10:]}": v for k, v in sd.items() if k.startswith("projector.")}
        | {f"module.predictor.{k[10:]}": v for k, v in sd.items() if k.startswith("predictor.")},
        "epoch": 5,
        "arch": "resnet_mini",
        "optimizer": {"state": {}, "param_groups": []},
    }
    path = tmp_path / "mini_simsiam.pth.tar"
    torch.save(obj, path)
    return path


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    # control: the file really runs code when unpickled the unsafe way
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="could run code when loaded") as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_not_a_checkpoint_and_truncated(tmp_path, mini_ckpt):
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch/safetensors checkpoint") as err:
        load_model(text)
    assert str(text) in str(err.value)
    data = mini_ckpt.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_model(cut)
    assert str(cut) in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "cut.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "cut.safetensors")


def test_arch_mismatch_and_shape_mismatch_load_nothing(tmp_path, mini_ckpt):
    with pytest.raises(CheckpointError, match="arch mismatch.*resnet_mini:8-8-16"):
        load_model(mini_ckpt, arch="resnet18")
    obj = torch.load(mini_ckpt, weights_only=True)
    obj["state_dict"]["module.predictor.3.bias"] = torch.zeros(7)  # wrong shape in one head tensor
    torch.save(obj, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="shape mismatches.*predictor.3.bias"):
        load_model(tmp_path / "bad.pth")


def test_unknown_layout_names_closest(tmp_path):
    torch.save({"weights": {"a.weight": torch.zeros(2)}, "optimizer": {}, "epoch": 3}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="unrecognised") as err:
        load_model(tmp_path / "odd.pth")
    msg = str(err.value)
    assert "'weights'" in msg and "Closest known layout: vicreg" in msg and "'model'" in msg


def test_method_mismatch_policy(mini_ckpt):
    with pytest.raises(CheckpointError, match="simsiam heads.*fresh_heads"):
        load_model(mini_ckpt, method="swav")
    model, report = load_model(mini_ckpt, method="swav", fresh_heads=True)
    assert report.method == "swav" and report.heads == [] and report.heads_built == ["projector", "prototypes"]
    assert "predictor.0.weight" in report.dropped and model.predictor is None


def test_names_random():  # torchvision:/timm: names load pretrained weights: tests/models/test_hub.py
    model, report = load_model("random:resnet_mini:8-8-16", method="vicreg")
    assert report.format == "random" and report.heads_built == ["projector"]
    assert any("warm up" in n for n in report.notes)
    _, report = load_model("random:resnet18")
    assert report.format == "random" and report.arch == "resnet18" and "random initialisation" in report.notes[0]


def test_cli_inspect_json(mini_ckpt, capsys):
    assert main(["inspect", str(mini_ckpt), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "simsiam" and d["arch"] == "resnet_mini:8-8-16"
    assert d["heads"] == ["projector", "predictor"] and d["missing"] == [] and d["unexpected"] == []
    assert d["epoch"] == 5 and d["has_optimizer_state"] is True
    assert main(["inspect", str(mini_ckpt)]) == 0
    assert "format     : simsiam" in capsys.readouterr().out


def test_cli_export_and_errors(tmp_path, mini_ckpt, capsys):
    out = tmp_path / "backbone.safetensors"
    assert main(["export", str(mini_ckpt), "--out", str(out), "--to", "safetensors"]) == 0
    model, report = load_model(out)
    assert report.format == "safetensors" and report.arch == "resnet_mini:8-8-16" and report.heads == []
    ref, _ = load_model(mini_ckpt)
    assert all(torch.equal(v, ref.backbone.state_dict()[k]) for k, v in model.backbone.state_dict().items())
    assert main(["export", str(mini_ckpt), "--out", str(tmp_path / "x.pth"), "--to", "vicreg"]) == 2
    assert "simsiam heads" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.pth")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp
