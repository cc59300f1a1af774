"""The collapse guard under 2 gloo processes (torch.distributed.run): rank 0 scores, both ranks take
its decision, restore ``best.pt`` and stop together; the run's last checkpoint is the best one."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from e2mc.train.run import load_checkpoint

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    from e2mc.config import load_config
    from e2mc.train.loop import Trainer

    cfg = load_config(None, ["data.dataset=digits", "data.image_size=8", "data.limit=256",
        "model.init=random:resnet_mini:8-16-32", "model.head_sizes={projector: [64, 64]}",
        "optim.batch_size=32", "optim.lr=50", "optim.schedule=constant", "train.log_every=1",
        "train.probe_size=0", "train.max_steps=12", "train.tensorboard=false",
        "train.guard.interval=2", "train.guard.max_rollbacks=1", "train.guard.action=rollback",
        f"out.dir={sys.argv[1]}"])
    t = Trainer(cfg)
    t.fit()
    print(f"rank done {t.dist.rank} step {t.state.global_step} stopped {t.guard_stopped}", flush=True)
    sys.exit(0)  # a plain exit: nothing of the run's group may abort the interpreter's shutdown
""")


@pytest.mark.slow
def test_two_processes_roll_back_and_stop_together(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    p = subprocess.run(cmd + [str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    events = json.loads((tmp_path / "r" / "guard_events.json").read_text())
    assert [e["action"] for e in events] == ["continued", "stopped"]
    step = events[-1]["step"]
    for rank in (0, 1):  # both ranks ended at the same step, stopped by the guard
        assert f"rank done {rank} step {step} stopped True" in p.stdout
    assert p.stderr.count("collapse guard at step") == 2  # one line per event (rank 0)
    best = load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert last["world_size"] == 2 and all(torch.equal(best["model"][k], v) for k, v in last["model"].items())
