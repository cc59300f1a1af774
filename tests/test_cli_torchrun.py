"""``torchrun --nproc_per_node=2 -m e2mc continue ...`` on CPU (gloo): the real CLI path runs to the
end, only rank 0 writes and speaks, and the run records the per-device and global batch."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from e2mc.cli import main
from e2mc.train.run import load_checkpoint, read_metrics


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "e2mc",
        "continue",
        str(tmp_path / "pre" / "checkpoints" / "last.pt"),
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
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
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
