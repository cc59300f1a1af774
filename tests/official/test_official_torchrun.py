"""Issue 22's whole path on a file written the way facebookresearch/vicreg's ``main_vicreg.py`` writes
it (LARS filter functions pickled under ``main_vicreg``, momentum for every parameter): ``e2mc
continue`` with the unchanged ``vicreg_e2mc_imagenet`` recipe under 2-process ``torchrun`` on CPU,
``e2mc export --to original``, and the official resume of the exported file.

Overridden: only what a CPU test must (the data, its size, the batch, the number of steps); the
recipe's method, add-on, LARS with the restored momentum, bf16 and ``sync_bn: true`` stay."""

import pytest
import torch
import yaml

from e2mc.cli import main
from e2mc.models.checkpoints import read_checkpoint
from e2mc.train.run import load_checkpoint
from tests.official.test_official_continue import reload
from tests.test_cli_torchrun import torchrun


@pytest.mark.slow
def test_official_vicreg_file_through_the_paper_recipe_under_torchrun(official, image_folder, tmp_path, capsys):
    f = official["vicreg_model_module"]  # a submitit run's file: main_vicreg.exclude_bias_and_norm
    assert main(["inspect", str(f.path)]) == 0
    assert "stand-in   : main_vicreg.exclude_bias_and_norm" in capsys.readouterr().out
    sets = [
        f"data.dataset={image_folder}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=32",
        "data.num_workers=0",
        "model.arch=null",  # the file's own
        "optim.batch_size=4",
        "train.max_steps=3",
        "train.log_every=1",
        "train.probe_size=0",
        "train.tensorboard=false",
    ]
    out = tmp_path / "run"
    args = ["continue", f.path, "--recipe", "vicreg_e2mc_imagenet", "--device", "cpu", "--out", out]
    res = torchrun([*args, *(a for o in sets for a in ("--set", o))], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    said = [line for line in res.stderr.splitlines() if "model.sync_bn" in line]
    assert said == [  # DDP refuses SyncBatchNorm on CPU: kept BatchNorm, said once (rank 0)
        "warning: model.sync_bn ignored (SyncBatchNorm needs CUDA devices and this run's 2 processes are on cpu); "
        "BatchNorm statistics stay per process"
    ], res.stderr[-3000:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())  # the recipe ran unchanged
    assert cfg["model"]["sync_bn"] is True and cfg["optim"]["name"] == "lars" and cfg["addon"]["name"] == "e2mc"
    assert cfg["run_info"]["world_size"] == 2
    assert "restored the optimiser state of 69 parameters" in res.stderr  # every LARS `mu` of the file
    st = load_checkpoint(out / "checkpoints" / "last.pt")
    assert st["world_size"] == 2 and st["step"] == 3
    exported = tmp_path / "model.pth"
    assert main(["export", str(out / "checkpoints" / "last.pt"), "--to", "original", "--out", str(exported)]) == 0
    assert "vicreg layout" in capsys.readouterr().out
    back = read_checkpoint(exported)[0]["model"]
    source = read_checkpoint(f.path)[0]["model"]
    assert set(back) == set(source)  # module.backbone.* / module.projector.*: no SyncBatchNorm trace
    assert all(back[k].shape == source[k].shape and back[k].dtype == source[k].dtype for k in source)
    assert not torch.equal(back["module.projector.6.weight"], source["module.projector.6.weight"])  # trained
    got = reload(f, exported)  # main_vicreg's resume: model.load_state_dict, optimizer.load_state_dict, a step
    assert got["filters_are_this_module"] is True and got["module"] == "main_vicreg"
    assert got["with_mu"] == got["params"] == 69


@pytest.mark.slow
def test_official_byol_file_continued_under_torchrun_and_read_back(official, image_folder, tmp_path, capsys):
    """solo-learn's BYOL .ckpt: 2-process ``torchrun`` continue (E2MC on the online projection, 2
    steps, the momentum target carried along), export to solo-learn's layout, the official reads."""
    f = official["byol_checkpoint"]
    sets = [
        f"data.dataset={image_folder}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=32",
        "data.num_workers=0",
        "optim.batch_size=4",
        "train.max_steps=2",
        "train.log_every=1",
        "train.probe_size=0",
        "train.tensorboard=false",
        "method.continue_momentum=0.99",  # move the target, so that the export shows it
    ]
    out = tmp_path / "run"
    args = ["continue", f.path, "--addon", "e2mc", "--device", "cpu", "--out", out]
    res = torchrun([*args, *(a for o in sets for a in ("--set", o))], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    st = load_checkpoint(out / "checkpoints" / "last.pt")
    assert st["world_size"] == 2 and st["step"] == 2 and st["method"] == "byol"
    assert any(k.startswith("target.backbone.") for k in st["model"])
    exported = tmp_path / "byol.ckpt"
    assert main(["export", str(out / "checkpoints" / "last.pt"), "--to", "original", "--out", str(exported)]) == 0
    assert "byol layout" in capsys.readouterr().out
    back, source = (read_checkpoint(p)[0]["state_dict"] for p in (exported, f.path))
    assert list(back) == list(source)
    for k in ("predictor.0.weight", "momentum_projector.0.weight", "momentum_backbone.conv1.weight"):
        assert not torch.equal(back[k], source[k]), k  # trained, and the target moved by its EMA
    got = reload(f, exported)  # strict LightningModule load + main_linear.py's backbone
    assert got["epoch"] == 999 + st["epoch"] and got["linear_missing"] == ["fc.bias", "fc.weight"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, addon, optim, params, epoch",
    [("swav_checkpoint", "e2mc", "larc", 67, 800), ("simsiam_checkpoint", "mmcr", "sgd", 72, 100)],
)
def test_official_swav_and_simsiam_files_continued_under_torchrun_and_resumed(
    official, image_folder, tmp_path, capsys, case, addon, optim, params, epoch
):
    """The two other first methods' official files take the same path: 2-process ``torchrun``
    continue with their stored optimiser (SwAV's LARC-wrapped SGD, SimSiam's SGD with ``fix_lr``
    groups), export to their own layout, the official resume (model, optimiser, one step)."""
    f = official[case]
    sets = [
        f"data.dataset={image_folder}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=32",
        "data.num_workers=0",
        "optim.batch_size=4",
        f"optim.name={optim}",
        "optim.restore_state=true",
        "train.max_steps=2",
        "train.log_every=1",
        "train.probe_size=0",
        "train.tensorboard=false",
        # 2 steps at the file's own LR collapse the tiny SimSiam net (guard score 0.16): the guard's check
        # after the last step would restore the start and stop the run; this test is about the files
        "train.guard.action=off",
    ]
    out = tmp_path / "run"
    args = ["continue", f.path, "--addon", addon, "--device", "cpu", "--out", out]
    res = torchrun([*args, *(a for o in sets for a in ("--set", o))], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"restored the optimiser state of {params} parameters" in res.stdout + res.stderr
    st = load_checkpoint(out / "checkpoints" / "last.pt")
    assert st["world_size"] == 2 and st["step"] == 2 and st["method"] == f.method
    exported = tmp_path / "exported" / f.path.name
    assert main(["export", str(out / "checkpoints" / "last.pt"), "--to", "original", "--out", str(exported)]) == 0
    capsys.readouterr()
    got = reload(f, exported)  # the official resume path: model, then the optimiser, one step
    assert got["epoch"] == epoch + st["epoch"]
    assert got["with_momentum"] >= params
