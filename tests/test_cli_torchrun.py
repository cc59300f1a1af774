"""``torchrun --nproc_per_node=2 -m e2mc continue ...`` on CPU (gloo): the real CLI path runs to the
end, only rank 0 writes and speaks, and the run records the per-device and global batch."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from e2mc.cli import main
from e2mc.train.run import load_checkpoint, read_metrics


def torchrun(args, cwd, timeout=600):
    """``torchrun --standalone --nproc_per_node=2 -m e2mc ARGS`` on CPU, one thread per process.

    ``--standalone`` binds its rendezvous store to port 0 and the workers share that store, so
    no free port is picked ahead and released (the race of a port chosen by the test). The
    timeout only bounds a hang (the suite's per-test timeout is the other bound).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "e2mc"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


@pytest.mark.slow
def test_torchrun_two_processes_through_the_cli(tmp_path, capsys):
    torch.set_num_threads(1)
    sets = [
        "data.image_size=8",
        "data.limit=256",
        "train.probe_size=0",
        "train.tensorboard=false",
        "model.init=random:resnet_mini:8-8-8",
        "model.head_sizes={projector: [32, 32]}",
    ]
    sets = [a for o in sets for a in ("--set", o)]
    assert (
        main(["pretrain", *sets, "--batch-size", "64", "--set", "train.max_steps=1", "--out", str(tmp_path / "pre")])
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "ddp"
    args = [
        "continue",
        tmp_path / "pre" / "checkpoints" / "last.pt",
        *sets,
        "--addon",
        "e2mc",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--set",
        "train.max_steps=3",
        "--set",
        "train.log_every=1",
        "--out",
        out,
    ]
    res = torchrun(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    done = [line for line in res.stdout.splitlines() if line.startswith("done: continue")]
    assert len(done) == 1 and f"-> {out} (next: e2mc evaluate {out}" in done[0], res.stdout  # rank 0 alone
    assert res.stderr.count("loaded:\n") == 1  # the load summary, from rank 0 alone
    assert "FutureWarning" not in res.stderr
    info = yaml.safe_load((out / "config.yaml").read_text())["run_info"]
    assert (info["world_size"], info["per_device_batch"], info["global_batch"]) == (2, 32, 64)
    steps = [r["step"] for r in read_metrics(out / "metrics.csv") if r["phase"] == "train"]
    assert steps == ["1", "2", "3"]  # one writer: no duplicated rows
    st = load_checkpoint(out / "checkpoints" / "last.pt")
    assert st["world_size"] == 2 and st["step"] == 3 and len(st["rng"]["per_rank"]) == 2
    assert sorted(os.listdir(out / "checkpoints")) == ["last.pt"]  # no stray temp files
    assert (out / ".e2mc.lock").read_text() == ""  # rank 0 alone took the run lock (rank 1 would fail) and released it


@pytest.mark.slow
def test_paper_recipe_with_sync_bn_runs_under_torchrun_on_cpu(tmp_path, capsys):
    """The VICReg ImageNet recipe (``model.sync_bn: true``) under 2-process torchrun on CPU: DDP
    refuses SyncBatchNorm there, so the run keeps BatchNorm, says so once (rank 0), finishes, and
    its result exports to the official layout. Overridden: only what a CPU test must (data, sizes,
    steps, the checkpoint); the recipe's method, add-on, optimiser (LARS, restored momentum) and
    sync_bn stay."""
    from PIL import Image

    from tests.train.test_paper_defaults import official_checkpoint

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "img" / "train" / c).mkdir(parents=True)
        for i in range(32):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "img" / "train" / c / f"{i}.png"
            )
    source = tmp_path / "resnet50_fullckpt.pth"
    official_checkpoint(source)  # official VICReg layout (ResNet-18 trunk, small expander) + LARS state
    obj = torch.load(source, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for st in obj["optimizer"]["state"].values():  # a trained run's LARS momentum is small (the
        st["mu"] = 1e-3 * torch.randn(st["mu"].shape, generator=g)  # fixture's marks each slot by value)
    torch.save(obj, source)
    sets = [
        f"data.dataset={tmp_path / 'img'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=32",  # 16 px leaves ResNet-18's layer4 a 1x1 input, where torch 2.14's CPU bf16 conv backward is not deterministic
        "data.num_workers=0",
        "model.arch=null",  # the checkpoint's own (resnet18)
        "optim.batch_size=16",
        "train.max_steps=3",
        "train.log_every=1",
        "train.probe_size=0",
        "train.tensorboard=false",
    ]
    out = tmp_path / "run"
    args = ["continue", source, "--recipe", "vicreg_e2mc_imagenet", "--device", "cpu", "--out", out]
    res = torchrun([*args, *(a for o in sets for a in ("--set", o))], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "SyncBatchNorm layers only work" not in res.stderr
    said = [line for line in res.stderr.splitlines() if "model.sync_bn" in line]
    assert said == [
        "warning: model.sync_bn ignored (SyncBatchNorm needs CUDA devices and this run's 2 processes are on cpu); "
        "BatchNorm statistics stay per process"
    ], res.stderr[-3000:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["sync_bn"] is True and cfg["optim"]["name"] == "lars" and cfg["addon"]["name"] == "e2mc"
    assert cfg["run_info"]["world_size"] == 2
    st = load_checkpoint(out / "checkpoints" / "last.pt")
    assert st["world_size"] == 2 and st["step"] == 3
    assert (
        main(["export", str(out / "checkpoints" / "last.pt"), "--to", "original", "--out", str(tmp_path / "x.pth")])
        == 0
    )
    assert "vicreg layout" in capsys.readouterr().out
    exported = torch.load(tmp_path / "x.pth", weights_only=True)["model"]
    official = torch.load(source, weights_only=True)["model"]
    assert set(exported) == set(official)  # module.backbone.* / module.projector.*: no SyncBatchNorm trace
    assert all(exported[k].shape == official[k].shape and exported[k].dtype == official[k].dtype for k in official)
    assert not torch.equal(exported["module.projector.6.weight"], official["module.projector.6.weight"])  # trained


def test_sync_bn_on_one_process_is_ignored_with_one_line():
    from torch import nn

    from e2mc.train.distributed import DistInfo, convert_sync_bn

    model, said = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), []
    assert convert_sync_bn(model, DistInfo(), said.append) is model
    assert isinstance(model[1], nn.BatchNorm1d) and not isinstance(model[1], nn.SyncBatchNorm)
    assert said == [
        "warning: model.sync_bn ignored (one process, nothing to synchronise); BatchNorm statistics stay per process"
    ]
