"""``torchrun --nproc_per_node=2 -m e2mc continue ...`` on CPU (gloo): the real CLI path runs to the
end, only rank 0 writes and speaks, and the run records the per-device and global batch."""

import os
import subprocess
import sys

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
        *sets,  # model.init=random:... wins over the checkpoint: no run's own data to default to
        "--dataset",
        "digits",
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
    # no stray temp files (best.pt: the collapse guard's, written by rank 0 alone before the first step)
    assert sorted(os.listdir(out / "checkpoints")) == ["best.pt", "last.pt"]
    assert (out / ".e2mc.lock").read_text() == ""  # rank 0 alone took the run lock (rank 1 would fail) and released it


def test_sync_bn_on_one_process_is_ignored_with_one_line():
    from torch import nn

    from e2mc.train.distributed import DistInfo, convert_sync_bn

    model, said = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), []
    assert convert_sync_bn(model, DistInfo(), said.append) is model
    assert isinstance(model[1], nn.BatchNorm1d) and not isinstance(model[1], nn.SyncBatchNorm)
    assert said == [
        "warning: model.sync_bn ignored (one process, nothing to synchronise); BatchNorm statistics stay per process"
    ]
