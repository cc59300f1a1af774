"""The collapse guard (``train.guard``): its cost per training step, and the score's healthy spread
against its drop under a destructive LR (what ``train.guard.drop``'s default is chosen from).

    python benchmarks/bench_guard.py [--threads 1] [--steps 8] [--runs 40]

Cost: the Trainer's step and the guard's check (score only, and score + ``best.pt`` write: the
worst case, a new best at every check), interleaved in one process, on two settings: the digits
recipe's model (resnet_mini 16-32-64, 16 px, batch 128) and bench_train.py's (ResNet-18 CIFAR stem +
2048-2048 projector, 32 px CIFAR-10 or random images, batch 256, bf16). Reported: the check's time
over ``interval`` steps' time at the default interval.

Spread: on digits, a VICReg start pre-trained ``--runs`` steps, then continued ``--runs`` steps
with the guard observing every 2 steps (``drop`` 0.99: it never acts): VICReg, VICReg + E2MC,
SimSiam, Barlow Twins and BYOL at their digits LR, and VICReg at LR x 1000. For each run the lowest
score / best-so-far ratio. Writes benchmarks/results/guard_cpu.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

CIFAR = "/work/shared/data/cifar10"
DIGITS = [
    "data.dataset=digits",
    "data.image_size=16",
    "model.head_sizes={projector: [256, 256]}",
    "optim.name=lars",
    "optim.batch_size=128",
    "optim.schedule=constant",
    "train.log_every=10",
    "train.probe_size=0",
    "train.tensorboard=false",
    "train.channels_last=true",
]
CIFAR_R18 = [
    f"data.dataset={CIFAR if os.path.isdir(CIFAR) else 'digits'}",
    "data.limit=2560",
    "data.image_size=32",
    "model.init=random:resnet18",
    "model.cifar_stem=true",
    "model.head_sizes={projector: [2048, 2048]}",
    "optim.name=lars",
    "optim.lr=0.3",
    "optim.batch_size=256",
    "optim.schedule=constant",
    "addon.name=e2mc",
    "train.precision=bf16",
    "train.channels_last=true",
    "train.log_every=10",
    "train.probe_size=0",
    "train.tensorboard=false",
]


def cost(overrides: list[str], steps: int, out: str) -> dict:
    """Mean seconds of a step, of a guard check and of a check with a best.pt write (interleaved)."""
    from e2mc.config import load_config
    from e2mc.train.loop import Trainer

    t = Trainer(load_config(None, [*overrides, f"out.dir={out}", "out.overwrite=true"]), quiet=True)
    batches = iter(t.loader)
    times: dict[str, list[float]] = {"step": [], "check": [], "check_best": []}
    t.model.train()
    t._guard_check()  # the start (and its neighbours)
    for i in range(steps + 1):
        images, _ = next(batches)
        start = time.perf_counter()
        t._pending.append(t.train_step(images, scheduler=t.state.scheduler))
        t.state.global_step += 1
        if t.global_step % t.cfg.train.log_every == 0:
            t._flush("train")
        step = time.perf_counter() - start
        for name in ("check", "check_best"):
            t.guard.best_score = -1.0 if name == "check_best" else float("inf")  # force a new best / none
            start = time.perf_counter()
            t._guard_check()
            if i > 0:  # the first of each is a warm-up
                times[name].append(time.perf_counter() - start)
        if i > 0:
            times["step"].append(step)
    t._pending = []
    t._close()
    return {k: sum(v) / len(v) for k, v in times.items()}


def spread(runs: int, root: Path) -> list[dict]:
    """Each continuation's lowest score / best-so-far ratio, and its checks' scores."""
    import e2mc
    from e2mc.train.run import read_metrics

    common = {"train__device": "cpu", "train__log_every": 10}
    start = e2mc.pretrain(
        "digits_vicreg_pretrain",
        train__max_steps=runs,
        train__probe_size=0,
        train__tensorboard=False,
        train__guard__action="off",
        out__dir=str(root / "start"),
        out__overwrite=True,
        **common,
    )
    ckpt = str(start / "checkpoints" / "last.pt")
    cases = [
        ("VICReg, LR 0.1", dict(method__name="vicreg", addon__name="none")),
        ("VICReg + E2MC, LR 0.1", dict(method__name="vicreg")),
        ("SimSiam + E2MC, LR 0.1", dict(method__name="simsiam", model__fresh_heads=True)),
        ("Barlow Twins, LR 0.1", dict(method__name="barlowtwins", addon__name="none", model__fresh_heads=True)),
        ("BYOL, LR 0.1", dict(method__name="byol", addon__name="none", model__fresh_heads=True)),
        ("VICReg + E2MC, LR 100 (x 1000)", dict(method__name="vicreg", optim__lr=100.0)),
    ]
    out = []
    for name, kw in cases:
        run = e2mc.continue_training(
            "digits_vicreg_e2mc",
            model__init=ckpt,
            train__max_steps=runs,
            train__probe_size=0,
            train__tensorboard=False,
            train__guard__interval=2,
            train__guard__drop=0.99,
            out__dir=str(root / name.split(",")[0].replace(" ", "_").replace("+", "")),
            out__overwrite=True,
            **common,
            **kw,
        )
        scores = [float(r["guard_score"]) for r in read_metrics(run / "metrics.csv") if r["guard_score"]]
        best, low = -1.0, 1.0
        for s in scores:
            low = min(low, s / best) if best > 0 else low
            best = max(best, s)
        out.append({"case": name, "scores": scores, "low": low})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8, help="timed steps (and checks) per cost setting")
    ap.add_argument("--runs", type=int, default=40, help="steps of the start and of each continuation")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "guard_cpu.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from e2mc.config import GuardConfig

    interval = GuardConfig().interval
    root = Path(tempfile.mkdtemp(prefix="e2mc_bench_guard_"))
    try:
        costs = {
            "digits, resnet_mini 16-32-64, batch 128": cost(
                [*DIGITS, "model.init=random:resnet_mini:16-32-64", "optim.lr=0.3"], args.steps, str(root / "c1")
            ),
            "CIFAR-10 32 px, ResNet-18 + 2048-2048, batch 256, bf16": cost(CIFAR_R18, args.steps, str(root / "c2")),
        }
        cases = spread(args.runs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        "# Collapse guard: cost and score spread (CPU)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared), torch {torch.__version__}, {args.threads} thread(s)",
        f"- command: `python benchmarks/bench_guard.py --threads {args.threads} --steps {args.steps} "
        f"--runs {args.runs}`",
        f"- guard defaults: interval {interval} steps, probe {GuardConfig().probe_size} images, "
        f"drop {GuardConfig().drop}",
        "",
        "## Cost (interleaved, means of the timed steps)",
        "",
        "| setting | s/step | s/check | s/check + best.pt | cost at the default interval (worst case) |",
        "|---|---|---|---|---|",
    ]
    for name, c in costs.items():
        frac, worst = c["check"] / (interval * c["step"]), c["check_best"] / (interval * c["step"])
        lines.append(
            f"| {name} | {c['step']:.3f} | {c['check']:.3f} | {c['check_best']:.3f} | {frac:.2%} ({worst:.2%}) |"
        )
    lines += [
        "",
        f"## Score spread (digits, continuations of {args.runs} steps from a {args.runs}-step VICReg start, "
        "checks every 2 steps)",
        "",
        "| run | lowest score / best so far | scores (first 8 checks) |",
        "|---|---|---|",
        *(f"| {c['case']} | {c['low']:.3f} | {', '.join(f'{s:.3g}' for s in c['scores'][:8])} |" for c in cases),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
