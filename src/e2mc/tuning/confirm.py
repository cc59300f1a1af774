"""``e2mc tune --confirm N``: the chosen setting against base-only on the TEST split, once.

Both arms continue the start on the full train split with the same recipe, LR and epochs (base-only
= add-on none), for training seeds 0..N-1 (``OUT/confirm/<label>-seed<k>/``, resumable like the
probes); each final checkpoint is evaluated once (kNN@20/200 with the full train split as bank,
the linear probe, RankMe; memoised by checkpoint sha256 in ``OUT/evals/``), and the table is
``e2mc.evaluation.compare``'s: differences to base-only with 95% t-intervals paired by training seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from e2mc.errors import TrainingDiverged
from e2mc.fileio import atomic_write_json
from e2mc.tuning.probes import STAGE, failed_text, read_json, run_jobs

PROTOCOLS = ("knn", "linear", "rankme")
KS = (20, 200)
HEADLINE = ("knn/top1_k20", "knn/top1_k200", "linear/top1")


def cached_evaluate(checkpoint, dataset: str, store: Path, device, batch_size: int, log=print) -> dict:
    """``evaluate`` of one checkpoint on the test split, memoised by its sha256 in ``store``."""
    from e2mc.evaluation.api import evaluate, evaluation_settings
    from e2mc.evaluation.features import file_sha256

    sha = file_sha256(checkpoint)
    key = hashlib.sha256(json.dumps([sha, dataset, PROTOCOLS, KS]).encode()).hexdigest()[:24]
    hit = read_json(store / f"{key}.json")
    if hit is not None:
        return hit["result"]
    log(f"evaluating {checkpoint} on the test split of {dataset}")
    STAGE["now"] = f"evaluating the confirm run {checkpoint}"
    t0 = time.perf_counter()
    settings = evaluation_settings(seeds=(0,), ks=KS, device=device, batch_size=batch_size, use_cache=False)
    res = evaluate(str(checkpoint), dataset, PROTOCOLS, settings)
    atomic_write_json(
        store / f"{key}.json",
        {
            "checkpoint": str(checkpoint),
            "sha256": sha,
            "dataset": dataset,
            "seconds": round(time.perf_counter() - t0, 2),
            "result": res,
        },
        indent=1,
        parents=True,
    )
    return res


def verdict(rows: list[dict], arm: str) -> str:
    """One sentence per headline metric: interval above zero, below zero, or containing it."""
    parts = []
    for m in HEADLINE:
        r = next((r for r in rows if r["arm"] == arm and r["metric"] == m), None)
        if r is None or r["diff"] is None:
            continue
        if r["diff_low"] is None:
            word = "no interval: " + ("n=1" if r.get("n", 1) <= 1 else "the same difference with every seed")
        elif r["diff_low"] > 0:
            word = "interval above zero"
        elif r["diff_high"] < 0:
            word = "interval below zero"
        else:
            word = "interval includes zero"
        lo = "" if r["diff_low"] is None else f" [{100 * r['diff_low']:+.2f}, {100 * r['diff_high']:+.2f}]"
        parts.append(f"{m} {100 * r['diff']:+.2f}{lo} ({word})")
    return f"`{arm}` − base-only: " + "; ".join(parts) + "."


def confirm_jobs(out: Path, recipe, base: dict, arm, n: int, epochs: float, batch: int, n_train: int, threads=None):
    """(arms, training jobs, steps, batches per epoch) of ``--confirm n``: base-only first, then ``arm``."""
    bpe = n_train // batch
    steps = max(1, round(epochs * bpe))
    base_over = {
        "addon.name": "none",
        **({"optim.lr": arm.overrides["optim.lr"]} if "optim.lr" in arm.overrides else {}),
    }
    arms = [("base-only", base_over), (arm.label, arm.overrides)]
    common = {**base, "train.epochs": math.ceil(epochs), "train.checkpoint_every_epochs": 1000}
    jobs = [
        {
            "label": f"{name}-seed{s}",
            "dir": str(out / "confirm" / f"{name}-seed{s}"),
            "source": recipe,
            "overrides": {**common, **over, "train.seed": s},
            "steps": steps,
            "eval": None,
            "threads": threads,
        }
        for name, over in arms
        for s in range(n)
    ]
    return arms, jobs, steps, bpe


def run_confirm(
    out: Path,
    recipe,
    base: dict,
    points,
    arm,
    n: int,
    epochs: float,
    batch: int,
    n_train: int,
    dataset: str,
    device,
    eval_batch_size: int,
    workers: int,
    threads,
    log=print,
) -> dict:
    """Train both arms x ``n`` seeds, evaluate on the test split, compare; return the confirm section."""
    from e2mc.errors import ConfigError
    from e2mc.evaluation.compare import ComparisonResult, build_rows

    if n < 1:
        raise ConfigError(f"--confirm needs N >= 1 training seeds, got {n}")
    arms, jobs, steps, bpe = confirm_jobs(out, recipe, base, arm, n, epochs, batch, n_train, threads)
    base_over = arms[0][1]
    t0 = time.perf_counter()
    recs = run_jobs(jobs, workers, log)
    bad = next((r for r in recs if r.get("failed")), None)
    if bad is not None:  # nothing to compare on the test split without both arms' checkpoints
        raise TrainingDiverged(
            f"the confirmation run {bad['label']} {failed_text(bad['failed'])} "
            f"({bad['failed']['reason'].split(': ', 1)[-1]}) on the full train split; the tune's result is in "
            f"{out / 'tune.md'}; confirm at a lower LR (e2mc compare) or rerun with --confirm 0"
        )
    train_s = sum(r["train_seconds"] for r in recs)
    names = [name for name, _ in arms]
    ckpts = [[str(out / "confirm" / f"{name}-seed{s}" / "checkpoints" / "last.pt") for s in range(n)] for name in names]
    results = [[cached_evaluate(c, dataset, out / "evals", device, eval_batch_size, log) for c in cks] for cks in ckpts]
    seeds = [list(range(n)) for _ in names]
    comp = ComparisonResult(
        names, ckpts, dataset, list(PROTOCOLS), [0], results, build_rows(names, results, seeds), seeds
    )
    comp.to_json(out / "confirm" / "comparison.json")
    md = comp.to_markdown()
    return {
        "arm": arm.label,
        "overrides": arm.overrides,
        "base_only": base_over,
        "seeds": n,
        "epochs": epochs,
        "steps": steps,
        "batches_per_epoch": bpe,
        "dataset": dataset,
        "markdown": md,
        "rows": [r for r in comp.rows if r["metric"] in HEADLINE],
        "verdict": verdict(comp.rows, arm.label),
        "train_seconds": round(train_s, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
