"""The collapse guard on DINO continuations of a tiny ViT (issue 24, item 4): which settings collapse.

    OMP_NUM_THREADS=1 python benchmarks/bench_guard_dino.py [--out /tmp/guard_dino]

The start and the settings of ``tests/train/test_guard_dino.py`` (a 20-step DINO pre-training on
digits at 16 px; ViT depth 2, width 32, patch 4), continued 80 steps with the guard checking every 5
and stopping at the first drop: the naive DINO options (teacher temperature warm-up, zero centre,
momentum 0.996) at the continuation's LR and 2.5x it, the same without centring (``center_momentum``
1), teacher temperature 0.001 and momentum 0, and the careful defaults at the continuation's LR and
at a restarted pre-training peak (25x). Prints one line per setting: steps trained, stopped or not,
lowest and last guard score (the README's "Collapse guard" numbers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2mc.train.loop import Trainer  # noqa: E402
from e2mc.train.run import read_metrics  # noqa: E402
from tests.train.conftest import tiny_config  # noqa: E402
from tests.train.test_guard_dino import CAREFUL_LR, NAIVE, VIT  # noqa: E402

EXTREME = ["method.center_momentum=1.0", "method.warmup_teacher_temp=0.001", "method.continue_momentum=0.0"]
EXTREME += ["method.momentum_schedule=constant"]
SETTINGS = {
    "naive, LR 0.002": [*NAIVE, f"optim.lr={CAREFUL_LR}"],
    "naive, LR 0.005": [*NAIVE, f"optim.lr={CAREFUL_LR * 2.5}"],
    "naive, no centring, T 0.001, momentum 0, LR 0.002": [*NAIVE, *EXTREME, f"optim.lr={CAREFUL_LR}"],
    "naive, no centring, T 0.001, momentum 0, LR 0.005": [*NAIVE, *EXTREME, f"optim.lr={CAREFUL_LR * 2.5}"],
    "careful, LR 0.002": [f"optim.lr={CAREFUL_LR}"],
    "careful, LR 0.05": ["optim.lr=0.05"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/guard_dino", help="folder for the start and the runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.out)
    start = root / "start"
    sets = [*VIT, "train.max_steps=20", "train.guard.action=off", f"optim.lr={CAREFUL_LR}", "out.overwrite=true"]
    Trainer(tiny_config(start, *sets), quiet=True).fit()
    for i, (name, extra) in enumerate(SETTINGS.items()):
        run = root / f"run{i}"
        common = [f"model.init={start}/checkpoints/last.pt", "model.head_sizes={}", "train.epochs=3"]
        common += ["train.guard.interval=5", "train.max_steps=80", "train.guard.action=stop", "out.overwrite=true"]
        t = Trainer(tiny_config(run, *VIT, *common, *extra, mode="continue"), quiet=True)
        t.fit()
        rows = [r for r in read_metrics(run / "metrics.csv") if r["phase"] == "guard" and r["guard_score"]]
        s = [float(r["guard_score"]) for r in rows]
        print(f"{name}: {t.state.global_step} steps, stopped {t.guard_stopped}, lowest {min(s):.3f}, last {s[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
