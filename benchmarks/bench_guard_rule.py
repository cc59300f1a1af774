"""Which drop rule the collapse guard uses (``train.guard.reference``): the guard's raw terms recorded
on healthy and destructive continuations (observing only: ``drop`` 0.999), then four rules
evaluated on the same checks.

    OMP_NUM_THREADS=1 python benchmarks/bench_guard_rule.py [--out DIR] [--json STUDY.json]

Runs: a 40-step digits VICReg start continued 80 steps (checked every 2) with VICReg, VICReg + E2MC,
SimSiam + E2MC, Barlow Twins, BYOL (fresh heads where the method needs them), the MMCR add-on, and
VICReg + E2MC at LR x 100 and x 1000; the tiny-ViT DINO start of ``tests/train/test_guard_dino.py``
continued 80 steps (checked every 5) with the naive options (teacher temperature warm-up, zero
centre, momentum 0.996) at LR 0.002 and 0.005, the same with no centring / temperature 0.001 /
momentum 0, the careful defaults at 0.002 and 0.005, and both at a restarted pre-training LR (0.05);
and the careful defaults with the E2MC add-on at 0.002 and 0.05.

Rules, for each run: ``best`` (act below 0.5 x the best score so far: the rule before 2026-12-06),
``start`` (act below 0.5 x the start's score, 1.0: the default now), ``capped`` (each term's ratio
capped at 1, i.e. no rise counts, then act below 0.5), each with the rise of a term the run's loss
maximises not counted (``Guard.optimised``: E2MC's entropy with the E2MC add-on), and ``start, all
rises`` (the start rule counting that rise too: the default before). Writes ``benchmarks/results/guard_rule_cpu.md``
and the raw checks as JSON; ``--json`` re-tabulates a saved study without training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("rankme", "rankme_proj", "entropy", "agreement", "knn")


def record(root: Path) -> dict:
    """Train every run and keep its guard checks' raw values."""
    import e2mc
    from e2mc.train.loop import Trainer
    from e2mc.train.run import read_metrics
    from tests.train.conftest import tiny_config
    from tests.train.test_guard_dino import CAREFUL_LR, NAIVE, VIT

    def checks(run: Path) -> list[dict]:
        rows = [r for r in read_metrics(run / "metrics.csv") if r["phase"] == "guard" and r.get("guard_score")]
        return [
            {"step": int(float(r["step"])), **{k: float(r[f"guard_{k}"]) for k in KEYS if r.get(f"guard_{k}")}}
            for r in rows
        ]

    out: dict = {}
    common = {"train__device": "cpu", "train__log_every": 10, "train__probe_size": 0, "train__tensorboard": False}
    start = e2mc.pretrain(
        "digits_vicreg_pretrain",
        train__max_steps=40,
        train__guard__action="off",
        out__dir=str(root / "start"),
        out__overwrite=True,
        **common,
    )
    ckpt = str(start / "checkpoints" / "last.pt")
    cases = [
        ("VICReg, LR 0.1", dict(method__name="vicreg", addon__name="none"), "healthy"),
        ("VICReg + E2MC, LR 0.1", dict(method__name="vicreg"), "healthy"),
        ("SimSiam + E2MC, LR 0.1", dict(method__name="simsiam", model__fresh_heads=True), "healthy"),
        (
            "Barlow Twins, LR 0.1",
            dict(method__name="barlowtwins", addon__name="none", model__fresh_heads=True),
            "healthy",
        ),
        ("BYOL, LR 0.1", dict(method__name="byol", addon__name="none", model__fresh_heads=True), "healthy"),
        ("VICReg + MMCR, LR 0.1", dict(method__name="vicreg", addon__name="mmcr"), "healthy"),
        ("VICReg + E2MC, LR 100 (x 1000)", dict(method__name="vicreg", optim__lr=100.0), "destructive"),
        ("VICReg + E2MC, LR 10 (x 100)", dict(method__name="vicreg", optim__lr=10.0), "destructive"),
    ]
    for i, (name, kw, kind) in enumerate(cases):
        run = e2mc.continue_training(
            "digits_vicreg_e2mc",
            model__init=ckpt,
            train__max_steps=80,
            train__guard__interval=2,
            train__guard__drop=0.999,
            out__dir=str(root / f"v{i}"),
            out__overwrite=True,
            **common,
            **kw,
        )
        out[name] = {"kind": kind, "addon": kw.get("addon__name", "e2mc"), "checks": checks(run)}
        print(name, flush=True)
    dstart = root / "dino_start"
    sets = [*VIT, "train.max_steps=20", "train.guard.action=off", f"optim.lr={CAREFUL_LR}", "out.overwrite=true"]
    Trainer(tiny_config(dstart, *sets), quiet=True).fit()
    extreme = [
        "method.center_momentum=1.0",
        "method.warmup_teacher_temp=0.001",
        "method.continue_momentum=0.0",
        "method.momentum_schedule=constant",
    ]
    dino = {
        "DINO naive, LR 0.002": ([*NAIVE, f"optim.lr={CAREFUL_LR}"], "naive"),
        "DINO naive, LR 0.005": ([*NAIVE, f"optim.lr={CAREFUL_LR * 2.5}"], "naive"),
        "DINO naive + no centring, T 0.001, momentum 0, LR 0.002": (
            [*NAIVE, *extreme, f"optim.lr={CAREFUL_LR}"],
            "naive",
        ),
        "DINO careful, LR 0.002": ([f"optim.lr={CAREFUL_LR}"], "healthy"),
        "DINO careful, LR 0.005": ([f"optim.lr={CAREFUL_LR * 2.5}"], "healthy"),
        "DINO naive, LR 0.05 (restarted)": ([*NAIVE, "optim.lr=0.05"], "destructive"),
        "DINO careful, LR 0.05": (["optim.lr=0.05"], "destructive"),
        "DINO careful + E2MC, LR 0.002": ([f"optim.lr={CAREFUL_LR}", "addon.name=e2mc"], "healthy"),
        "DINO careful + E2MC, LR 0.05": (["optim.lr=0.05", "addon.name=e2mc"], "destructive"),
    }
    for i, (name, (extra, kind)) in enumerate(dino.items()):
        run = root / f"d{i}"
        c = [
            f"model.init={dstart}/checkpoints/last.pt",
            "model.head_sizes={}",
            "train.epochs=3",
            "train.max_steps=80",
            "train.guard.interval=5",
            "train.guard.drop=0.999",
            "out.overwrite=true",
        ]
        Trainer(tiny_config(run, *VIT, *c, *extra, mode="continue"), quiet=True).fit()
        out[name] = {"kind": kind, "addon": "e2mc" if "addon.name=e2mc" in extra else "none", "checks": checks(run)}
        print(name, flush=True)
    return out


def optimised(run: dict, name: str) -> tuple[str, ...]:
    """The terms the run's loss maximises (``Guard.optimised``): E2MC's entropy with the E2MC add-on
    (a study saved before ``addon`` was recorded: read from the run's name)."""
    from e2mc.train.guard import optimised_terms

    addon = run.get("addon", "e2mc" if "E2MC" in name else "none")
    return optimised_terms(SimpleNamespace(name=addon, entropy_weight=None))


def score(check: dict, start: dict, capped: bool = False, optimised: tuple[str, ...] = ()) -> float:
    """The guard's own score (``Guard.score``) of ``check`` against ``start``; ``capped``: with no
    rise counted (each value replaced by the smaller of it and the start's); ``optimised``: the terms
    whose rises the guard does not count (``Guard.optimised``)."""
    from e2mc.train.guard import Guard

    values = {k: check[k] for k in KEYS if k in check}
    if capped:
        values = {k: min(v, start[k]) if k in start and math.isfinite(v) else v for k, v in values.items()}
    g = Guard(SimpleNamespace(action="off"), optimised=optimised)
    g.start = {k: start[k] for k in KEYS if k in start}
    return g.score(values)


def rules(checks: list[dict], drop: float = 0.5, optimised: tuple[str, ...] = ()) -> dict:
    """Each rule's lowest margin (score / its reference) and the first step it acts at; ``start_all``:
    the start rule counting every term's rise (before 2026-12-06 12:00, also the optimised ones)."""
    s0 = checks[0]
    plain = [score(c, s0, optimised=optimised) for c in checks]
    every = [score(c, s0) for c in checks]
    capped = [score(c, s0, capped=True) for c in checks]
    out = {
        "best": [1.0, None],
        "start": [1.0, None],
        "start_all": [1.0, None],
        "capped": [1.0, None],
        "max": max(x for x in plain if math.isfinite(x)),
    }
    best = plain[0]
    for c, s, sa, sc in zip(checks[1:], plain[1:], every[1:], capped[1:]):
        for rule, val, ref in (("best", s, best), ("start", s, 1.0), ("start_all", sa, 1.0), ("capped", sc, 1.0)):
            ratio = val / ref if math.isfinite(val) else 0.0
            out[rule][0] = min(out[rule][0], ratio)
            if ratio < 1 - drop and out[rule][1] is None:
                out[rule][1] = c["step"]
        if math.isfinite(s):
            best = max(best, s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/e2mc_guard_rule", help="folder for the runs and study.json")
    ap.add_argument("--json", help="a saved study.json: tabulate it without training")
    ap.add_argument("--md", default=str(Path(__file__).parent / "results" / "guard_rule_cpu.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.json:
        study = json.loads(Path(args.json).read_text())
    else:
        root = Path(args.out)
        root.mkdir(parents=True, exist_ok=True)
        study = record(root)
        (root / "study.json").write_text(json.dumps(study, indent=1))
    lines = [
        "# Collapse guard: which drop rule (CPU)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {platform.machine()}, {os.cpu_count()} cores (shared), "
        f"torch {torch.__version__}, 1 thread; command: `python benchmarks/bench_guard_rule.py`"
        + (f" (tabulated from a saved study, {args.json})" if args.json else ""),
        "- kind: healthy (the method's own continuation), destructive (LR far above the start's), naive (DINO's",
        "  pre-training schedules restarted: nothing is known; on this tiny start none of them lowered the score)",
        "- margin: the lowest score / reference over the run's checks (the rule acts below 0.5); acts at: the first",
        "  step where it would act (none: never). best: reference = best score so far; start: the start's score",
        "  (1.0, the default); capped: every term's ratio capped at 1, reference 1.0. best, start and capped",
        "  count a rise of a term the run's loss maximises (E2MC's entropy with the E2MC add-on) as no change",
        "  (the default since 2026-12-06); start, all rises: the start rule counting it (the rule before).",
        "",
        "| run | kind | checks | highest score | margin best | margin start | margin start, all rises | margin capped "
        "| acts at (best / start / start, all rises / capped) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in study.items():
        r = rules(run["checks"], optimised=optimised(run, name))
        acts = " / ".join("-" if r[k][1] is None else str(r[k][1]) for k in ("best", "start", "start_all", "capped"))
        lines.append(
            f"| {name} | {run['kind']} | {len(run['checks'])} | {r['max']:.2f} | {r['best'][0]:.3f} | "
            f"{r['start'][0]:.3f} | {r['start_all'][0]:.3f} | {r['capped'][0]:.3f} | {acts} |"
        )
    Path(args.md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
