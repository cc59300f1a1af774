"""How often a finished 2-process CPU (gloo) ``torchrun`` run aborts at the interpreter's exit
("terminate called without an active exception", exit -6), with and without a DDP wrapper left for
the interpreter's shutdown to free.

    python benchmarks/repro_gloo_exit_abort.py [--runs 20] [--e2mc 40]

Two parts:
- pure PyTorch, no e2mc code: a DDP-wrapped ``Linear`` trained 5 steps, then
  ``destroy_process_group()`` and ``sys.exit(0)``, in four endings: no DDP (``plain``), the DDP
  wrapper kept (``ddp``), deleted without a collection (``ddp_del``: DDP sits in reference cycles,
  so it lives on), unwrapped and ``gc.collect()`` before the group is destroyed (``ddp_collected``);
- e2mc: ``pretrain`` of a tiny run (8 steps) through ``e2mc.cli.main`` and ``sys.exit`` (a script of
  one's own, not the console script, which ends through ``os._exit``).

Writes ``benchmarks/results/gloo_exit_abort.md``. One run is ~2 s (torch) or ~8 s (e2mc) on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABORT = "terminate called without an active exception"

TORCH_CHILD = textwrap.dedent("""
    import gc, sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mode = sys.argv[1]
    model = torch.nn.Linear(4, 4)
    if mode != "plain":
        model = torch.nn.parallel.DistributedDataParallel(model)
    for _ in range(5):
        model(torch.randn(8, 4)).sum().backward()
    if mode == "ddp_collected":
        model = model.module
        gc.collect()
    dist.destroy_process_group()
    if mode == "ddp_del":
        del model
    sys.exit(0)
""")

E2MC_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from e2mc.cli import main
    sys.exit(main(sys.argv[1:]))
""")

E2MC_ARGS = ["pretrain", "--dataset", "digits", "--batch-size", "16", "--device", "cpu", "--epochs", "2"]
for _o in ["data.image_size=8", "data.limit=128", "train.probe_size=0", "train.tensorboard=false",
           "model.init=random:resnet_mini:8-8-8", "model.head_sizes={projector: [32, 32]}"]:  # fmt: skip
    E2MC_ARGS += ["--set", _o]


def torchrun(script: Path, args: list[str], cwd: Path) -> tuple[int, bool]:
    """Exit code of one 2-process run, and whether a rank printed gloo's exit abort."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    return p.returncode, ABORT in p.stderr + p.stdout


def count(script: Path, args_of, runs: int, tmp: Path) -> tuple[int, int]:
    failed = aborted = 0
    for i in range(runs):
        code, abort = torchrun(script, args_of(i), tmp)
        failed += code != 0
        aborted += abort
    return failed, aborted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="runs per pure-PyTorch ending")
    ap.add_argument("--e2mc", type=int, default=40, help="runs of the tiny e2mc pretrain")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gloo_exit_abort.md"))
    ap.add_argument("--label", default="", help="appended to the e2mc row (e.g. the commit)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "torch_child.py").write_text(TORCH_CHILD)
        (tmp / "e2mc_child.py").write_text(E2MC_CHILD)
        for mode in ("plain", "ddp", "ddp_del", "ddp_collected") if a.runs else ():
            failed, aborted = count(tmp / "torch_child.py", lambda i, m=mode: [m], a.runs, tmp)
            rows.append((f"PyTorch only, `{mode}`", a.runs, failed, aborted))
            print(rows[-1], flush=True)
        if a.e2mc:
            failed, aborted = count(tmp / "e2mc_child.py", lambda i: [*E2MC_ARGS, "--out", f"r{i}"], a.e2mc, tmp)
            rows.append((f"e2mc `pretrain` through `cli.main` + `sys.exit`{a.label}", a.e2mc, failed, aborted))
            print(rows[-1], flush=True)
    import torch

    lines = [
        "# gloo's abort at a finished run's exit",
        "",
        f"`python benchmarks/repro_gloo_exit_abort.py --runs {a.runs} --e2mc {a.e2mc}`; torch {torch.__version__},"
        f" Python {platform.python_version()}, {os.cpu_count()} CPU cores ({platform.machine()}).",
        "",
        "| ending | runs | exit != 0 | gloo exit abort |",
        "|---|---|---|---|",
        *(f"| {name} | {n} | {f} | {ab} |" for name, n, f, ab in rows),
        "",
    ]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
