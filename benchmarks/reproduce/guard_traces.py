"""The collapse guard's checks in finished arms runs, re-scored under the guard's rule and under the
rule before 2026-12-06 (every term's rise counted, also the term the add-on maximises).

    python -m benchmarks.reproduce.guard_traces --runs /work/e2mc-runs/cifar10_dino_vit_arms/runs \
        --out benchmarks/results/cifar10_dino_vit/guard.md

Reads each run's ``metrics.csv`` (the ``guard`` rows: the raw terms the run recorded) and
``config.yaml`` (its add-on); writes one row per run: checks, the lowest and last score under each
rule, the step of the lowest, the last agreement and backbone RankMe ratio, and the events.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

KEYS = ("rankme", "rankme_proj", "entropy", "agreement", "knn")


def traces(run: Path) -> dict | None:
    from e2mc.train.guard import Guard, optimised_terms
    from e2mc.train.run import read_metrics

    rows = [r for r in read_metrics(run / "metrics.csv") if r["phase"] == "guard" and r.get("guard_score")]
    if not rows:
        return None
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    addon = SimpleNamespace(**{"entropy_weight": None, **(cfg.get("addon") or {})})
    checks = [{k: float(r[f"guard_{k}"]) for k in KEYS if r.get(f"guard_{k}")} for r in rows]
    steps = [int(float(r["step"])) for r in rows]
    out = {"addon": addon.name, "checks": len(rows), "events": sum(1 for r in rows if r.get("guard_event"))}
    for rule, optimised in (("now", optimised_terms(addon)), ("before", ())):
        g = Guard(SimpleNamespace(action="off"), optimised=optimised)
        g.start = dict(checks[0])
        scores = [g.score(c) for c in checks]
        low = min(range(len(scores)), key=scores.__getitem__)
        out[rule] = {"lowest": scores[low], "at": steps[low], "last": scores[-1]}
    out["agreement_last"] = checks[-1].get("agreement")
    out["rankme_ratio_last"] = checks[-1]["rankme"] / checks[0]["rankme"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="folder of run folders (arms.py's OUT/runs)")
    ap.add_argument("--out", required=True, help="markdown file to write")
    args = ap.parse_args()
    lines = [
        "# Collapse guard checks of the arms (re-scored from each run's metrics.csv)",
        "",
        f"Command: `python -m benchmarks.reproduce.guard_traces --runs {args.runs} --out {args.out}`. Score: the",
        "guard's (geometric mean of the terms' ratios to the start, 1.0 at the start; it acts below 0.5). now: a",
        "rise of the term the add-on maximises (E2MC's entropy) counts as no change (the default since 2026-12-06);",
        "before: every rise counted (the rule these runs trained under). Runs with the guard off have no checks.",
        "",
        "| run | add-on | checks | lowest now (step) | last now | lowest before (step) | last before | agreement, last | backbone RankMe / start's, last | events |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in sorted(p for p in Path(args.runs).iterdir() if (p / "metrics.csv").is_file()):
        harness = run / "harness.json"  # arms.py's marker: a run still training is left out
        if harness.is_file() and not json.loads(harness.read_text()).get("done"):
            continue
        t = traces(run)
        if t is None:
            lines.append(f"| {run.name} | | 0 (guard off) | | | | | | | |")
            continue
        n, b = t["now"], t["before"]
        lines.append(
            f"| {run.name} | {t['addon']} | {t['checks']} | {n['lowest']:.3f} ({n['at']}) | {n['last']:.3f} | "
            f"{b['lowest']:.3f} ({b['at']}) | {b['last']:.3f} | {t['agreement_last']:.3f} | {t['rankme_ratio_last']:.3f} | {t['events']} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
