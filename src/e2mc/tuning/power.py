"""Detection power up front: how large a paired kNN@20 difference the tune can see, and the held-out size.

Before any probe of the search trains, a PILOT measures the per-image noise floor: two base-only
probes of the start that differ only in their training seed (``seed`` and ``seed + 1``), trained as
long as the first rung, scored on the largest held-out part allowed (``holdout_cap`` of the train
split, in ``OUT/pilot/``). The fraction of held-out images on which their kNN@20 outcomes differ is
the discordance ``p`` (at least one image's worth). From it (``tuning.paired``): the number of
images on which a paired difference of ``target`` (default 0.5 kNN points) is detected with 80%
power at the 5% level, the held-out size (that number, capped; ``--holdout`` overrides) and the
minimum detectable difference (MDE) at that size, printed and written next to the result.
"""

from __future__ import annotations

import math
from pathlib import Path

from e2mc.errors import ConfigError
from e2mc.tuning import paired, scoring
from e2mc.tuning.outcomes import NAME
from e2mc.tuning.probes import run_jobs


def check(target: float, cap: float) -> None:
    """One-line errors for a target difference or a cap out of range."""
    if not (math.isfinite(float(target)) and 0 < float(target) < 100):
        raise ConfigError(f"--target-diff is in kNN points, > 0 and < 100 (e.g. 0.5), got {target}")
    if not (math.isfinite(float(cap)) and 0 < float(cap) < 1):
        raise ConfigError(f"--holdout-cap is a fraction of the train split in (0, 1) (e.g. 0.2), got {cap}")


def pilot(spec, plan, source, first_epochs: float, ev: dict, ref_overrides: dict, out: Path, log) -> dict:
    """Run (or reuse) the pilot; return ``tune.json``'s ``power`` dict and set nothing else."""
    from e2mc.data.datasets import build_dataset

    n = len(source)
    n_cap = max(scoring.K, min(int(spec.holdout_cap * n), n - scoring.K))
    split = scoring.holdout_split(
        out / "pilot" / "split.json", str(spec.dataset), source.targets, n_cap, spec.seed, spec.train_images
    )
    bpe = len(build_dataset(str(split), "train")) // plan.batch
    steps = int(spec.pilot_steps) if spec.pilot_steps else max(1, round(first_epochs * max(bpe, 1)))
    over = {
        **plan.base,
        "data.dataset": str(split),
        "data.split": "train",
        "train.epochs": max(1, math.ceil(steps / max(bpe, 1))),
        "train.checkpoint_every_epochs": 1000,
        **ref_overrides,
    }
    ev = {**ev, "dataset": str(split), "protocols": [NAME]}
    jobs = [
        {
            "label": f"pilot-seed{s}",
            "dir": str(out / "pilot" / f"seed{s}"),
            "source": spec.recipe,
            "overrides": {**over, "train.seed": int(s)},
            "steps": steps,
            "eval": ev,
            "threads": plan.threads,
        }
        for s in (spec.seed, spec.seed + 1)
    ]
    log(f"power pilot: 2 base-only probes (training seeds {spec.seed}, {spec.seed + 1}) of {steps} steps")
    recs = run_jobs(jobs, plan.workers, log)
    a, b = (r["outcomes"][str(steps)] for r in recs)
    measured = paired.discordance(a, b)
    p = max(measured, 1 / n_cap)
    target = float(spec.target_diff) / 100
    needed = paired.images_needed(target, p)
    n_hold = int(spec.holdout) if spec.holdout is not None else max(scoring.K, min(needed, n_cap))
    return {
        "pilot_steps": steps,
        "pilot_images": n_cap,
        "discordance": measured,
        "discordance_used": p,
        "target": target,
        "images_needed": needed,
        "cap_fraction": float(spec.holdout_cap),
        "cap_images": n_cap,
        "held_out": n_hold,
        "mde": paired.mde(n_hold, p),
        "alpha": paired.ALPHA,
        "power": paired.POWER,
        "reaches_target": paired.mde(n_hold, p) <= target * (1 + 1e-9),
    }


def describe(pw: dict) -> str:
    """One sentence: the MDE, how it was measured, whether the target is reached."""
    reach = (
        "reaches"
        if pw["reaches_target"]
        else f"misses (the target needs {pw['images_needed']} images; the cap allows {pw['cap_images']})"
    )
    return (
        f"minimum detectable paired kNN@20 difference {100 * pw['mde']:.2f} points (80% power, 5% level) "
        f"on {pw['held_out']} held-out images, from a discordance of {100 * pw['discordance']:.1f}% between two "
        f"base-only pilot probes ({pw['pilot_steps']} steps, training seeds differ); "
        f"it {reach} the target of {100 * pw['target']:.2f} points"
    )
