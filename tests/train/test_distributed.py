"""Two gloo processes on CPU (launched by torch.distributed.run) match one process on the same
global batch.

To make the comparison exact, BatchNorm is swapped for per-sample norms (GroupNorm/LayerNorm,
through ``Trainer(model_fn=...)``): plain BN normalises each rank's half-batch with its own
statistics, and SyncBatchNorm has no CPU kernel. Views are deterministic (``views_fn``) so each
image gets the same views whichever rank draws it. The sampler gives rank r the r-th contiguous
slice of every global batch, so the gathered batch equals the single-process batch, in order.
"""

import subprocess
import sys
import textwrap

import pytest

from e2mc.train.run import read_metrics

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    from e2mc.config import load_config
    from e2mc.train.loop import Trainer

    from e2mc.train.distributed import mirrored_views as views
    from e2mc.train.distributed import per_sample_norms as no_bn

    out, batch = sys.argv[1], sys.argv[2]
    cfg = load_config(None, ["data.dataset=digits", "data.image_size=8", "data.limit=256",
        "model.init=random:resnet_mini:8-16-32", "model.head_sizes={projector: [64, 64]}",
        f"optim.batch_size={batch}", "optim.lr=0.05", "optim.schedule=constant", "train.log_every=1",
        "train.probe_size=0", "train.max_steps=3", "train.tensorboard=false", f"out.dir={out}"])
    trainer = Trainer(cfg, model_fn=no_bn, views_fn=views, quiet=True)
    trainer.fit()
    # no DDP wrapper may outlive the run: one freed at the interpreter's shutdown, after the
    # group, made gloo abort the process (exit -6) about one finished run in seven
    import gc
    from torch.nn.parallel import DistributedDataParallel
    left = [o for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
    assert not left, f"{len(left)} DDP wrapper(s) alive after fit()"
    sys.exit(0)  # as a script of one's own ends (the console script ends through os._exit)
""")


def _losses(run_dir):
    return [float(r["loss"]) for r in read_metrics(run_dir / "metrics.csv") if r["phase"] == "train"]


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env_cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # its rendezvous store binds port 0: no port picked ahead and released (a race)
        "--nproc_per_node=2",
        str(script),
    ]
    ddp = subprocess.run(env_cmd + [str(tmp_path / "ddp"), "32"], capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "64"], capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert len(a) == len(b) == 3
    # step 1: same forward on the same global batch; steps 2-3: the DDP gradients were right too
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * max(1.0, abs(y)), (a, b)
    import yaml

    info = yaml.safe_load((tmp_path / "ddp" / "config.yaml").read_text())["run_info"]
    assert (info["world_size"], info["per_device_batch"], info["global_batch"]) == (2, 32, 64)
