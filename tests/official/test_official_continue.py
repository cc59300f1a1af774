"""Continue an official file, export it `--to original`, and resume it the official code's way.

The exported file goes back through the generator's ``reload``: the official resume path
(``model.load_state_dict(ckpt[...])``, ``optimizer.load_state_dict(ckpt["optimizer"])``, one
step), run as the same module the source was written from, so a filter function pickled as
``main_vicreg.exclude_bias_and_norm`` must come back as that global.
"""

import json
import sys
import types

import pytest
import torch

from e2mc.cli import main
from e2mc.train.run import load_checkpoint
from tests.official.conftest import run_generator

TINY = [
    "data.image_size=32",
    "optim.batch_size=8",
    "optim.schedule=constant",
    "optim.lr=0.001",
    "train.epochs=1",
    "train.probe_size=0",
    "train.tensorboard=false",
]


def continue_and_export(src, images, tmp_path, capsys, *extra) -> tuple[str, object]:
    run, out = tmp_path / "run", tmp_path / "exported" / src.name
    sets = [a for o in [f"data.dataset={images}", *TINY, *extra] for a in ("--set", o)]
    assert main(["continue", str(src), *sets, "--addon", "e2mc", "--out", str(run)]) == 0
    said = capsys.readouterr()
    load_checkpoint(run / "checkpoints" / "last.pt")  # what --resume reads: weights-only, the source's layout kept
    assert main(["export", str(run / "checkpoints" / "last.pt"), "--out", str(out), "--to", "original"]) == 0
    capsys.readouterr()
    return said.out + said.err, out


def reload(f, path) -> dict:
    return json.loads(run_generator(f.gen, "reload", str(path), module=f.module).strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["vicreg_model_main", "vicreg_model_module"])
def test_vicreg_lars_momentum_reused_and_exported_for_main_vicreg(
    official, case, image_folder, tmp_path, capsys, monkeypatch, one_torch_thread
):
    f = official[case]
    said, out = continue_and_export(f.path, image_folder, tmp_path, capsys, "optim.restore_state=true")
    assert "restored the optimiser state of 69 parameters" in said  # every parameter's LARS `mu`
    got = reload(f, out)
    assert got["filters_are_this_module"] is True  # the same global exclude_bias_and_norm again
    assert got["module"] == (f.module or "__main__")
    assert got["with_mu"] == got["params"] == 69
    assert got["epoch"] == 101  # 100 before + 1 continued
    # the exported momentum is the continued run's, not the source's copied through
    before, after = (_load_with_filter(p, f.module, monkeypatch) for p in (f.path, out))
    moved = [
        i
        for i, s in before["optimizer"]["state"].items()
        if not torch.equal(s["mu"], after["optimizer"]["state"][i]["mu"])
    ]
    assert len(moved) == 69


def _load_with_filter(path, module, monkeypatch):
    """torch.load of a file naming ``<module>.exclude_bias_and_norm``, that name bound to a local function."""

    def exclude_bias_and_norm(p):
        return p.ndim == 1

    if module:
        stub = types.ModuleType(module)
        stub.exclude_bias_and_norm = exclude_bias_and_norm
        monkeypatch.setitem(sys.modules, module, stub)
    else:
        monkeypatch.setattr(sys.modules["__main__"], "exclude_bias_and_norm", exclude_bias_and_norm, raising=False)
    return torch.load(path, weights_only=False)


def test_swav_checkpoint_continued_and_resumable(official, image_folder, tmp_path, capsys, one_torch_thread):
    f = official["swav_checkpoint"]
    said, out = continue_and_export(
        f.path, image_folder, tmp_path, capsys, "optim.name=larc", "optim.restore_state=true"
    )
    got = reload(f, out)  # restart_from_checkpoint: model, then the LARC-wrapped SGD
    assert "restored the optimiser state of 67 parameters" in said
    assert got["epoch"] == 801 and got["lr_type"] == "float64"  # the source's numpy lr written back
    assert got["with_momentum"] == got["params"]


def test_swav_release_continued_and_reloaded(official, image_folder, tmp_path, capsys, one_torch_thread):
    f = official["swav_release"]
    _, out = continue_and_export(f.path, image_folder, tmp_path, capsys)
    sd = torch.load(out, weights_only=True)
    assert list(sd) == list(f.expected())  # the released layout: DDP names, same order, no wrapper
    from tests.official._nets import FbResNet, Wrapped

    w = sd["module.projection_head.0.weight"].shape[0], sd["module.projection_head.3.weight"].shape[0]
    net = Wrapped(FbResNet(hidden_mlp=w[0], output_dim=w[1], prototypes=sd["module.prototypes.weight"].shape[0]))
    net.load_state_dict(sd)  # strict, as eval_linear.py's model (less its strict=False) would take it


def test_simsiam_checkpoint_continued_and_resumable(official, image_folder, tmp_path, capsys, one_torch_thread):
    f = official["simsiam_checkpoint"]
    said, out = continue_and_export(
        f.path, image_folder, tmp_path, capsys, "optim.name=sgd", "optim.restore_state=true"
    )
    got = reload(f, out)  # main_simsiam.py --resume: model, then SGD with its two fix_lr groups
    assert got["epoch"] == 101 and got["arch"] == "resnet18"
    assert "restored the optimiser state of 72 parameters" in said  # all but encoder.fc.6.bias (no grad)
    assert got["fix_lr"] == [False, True]
    assert got["with_momentum"] == got["params"] - 1


def test_simsiam_fresh_optimiser_export_feeds_main_lincls(official, image_folder, tmp_path, capsys, one_torch_thread):
    """The paper's setting (fresh SGD): the export's encoder loads as main_lincls.py loads it."""
    import torchvision

    f = official["simsiam_checkpoint"]
    _, out = continue_and_export(f.path, image_folder, tmp_path, capsys, "optim.name=sgd")
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["epoch"] == 101 and ckpt["arch"] == "resnet18"
    sd = {k[len("module.encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("module.encoder.")}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    msg = torchvision.models.resnet18().load_state_dict(sd, strict=False)  # main_lincls.py's check
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"} and not msg.unexpected_keys


def test_byol_checkpoint_continued_and_read_back_by_solo_learn(
    official, image_folder, tmp_path, capsys, one_torch_thread
):
    """solo-learn's LARS momentum restored for the modules e2mc holds; the export is the
    LightningModule's state dict again (strict load, main_linear.py's backbone)."""
    f = official["byol_checkpoint"]
    said, out = continue_and_export(
        f.path, image_folder, tmp_path, capsys, "optim.name=lars", "optim.restore_state=true"
    )
    assert "restored the optimiser state of 72 parameters" in said  # all but the linear probe's 2
    assert "heads      : projector, predictor\n" in said and "teacher    : target: " in said
    got = reload(f, out)
    assert got["epoch"] == 1000 and got["pl_version"] == "2.1.2"  # 999 + 1 continued
    assert got["linear_missing"] == ["fc.bias", "fc.weight"] and not got["linear_unexpected"]
    src, back = torch.load(f.path, weights_only=True)["state_dict"], torch.load(out, weights_only=True)["state_dict"]
    assert list(back) == list(src)  # the LightningModule's keys, in its order
    assert all(back[k].shape == v.shape and back[k].dtype == v.dtype for k, v in src.items())
    assert not torch.equal(back["predictor.3.weight"], src["predictor.3.weight"])  # trained
    assert torch.equal(back["momentum_projector.0.weight"], src["momentum_projector.0.weight"])  # held: momentum 1
    assert torch.count_nonzero(back["classifier.weight"]) == 0  # the probe: zeros of its shape
