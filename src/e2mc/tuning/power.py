"""Detection power up front: how large a paired kNN@20 difference the tune can see, and the held-out size.

Before any probe of the search trains, a PILOT on the largest held-out part allowed (``holdout_cap``
of the train split, in ``OUT/pilot/``) fixes the first rung's length and measures the per-image
noise floor. First rung: a base-only probe of the start is trained to the first rung's steps and
resumed ``eta`` times longer until its backbone RankMe on the held-out part has moved by ``min_move``
(relative, label-free; default 5%) from the start's, or the last rung is reached; the first rung
is then at least that long (fewer, longer rungs). Noise: a second base-only probe, differing only
in its training seed, is trained as long. The fraction of held-out images on which their kNN@20 outcomes differ is
the discordance ``p`` (at least one image's worth). From it (``tuning.paired``): the number of
images on which a paired difference of ``target`` (default 0.5 kNN points) is detected with 80%
power at the 5% level, the held-out size (that number, capped; ``--holdout`` overrides) and the
minimum detectable difference (MDE) at that size, printed and written next to the result.
"""

from __future__ import annotations

import math
from pathlib import Path

from e2mc.errors import ConfigError, TrainingDiverged
from e2mc.tuning import paired, scoring
from e2mc.tuning.outcomes import NAME
from e2mc.tuning.probes import failed_text, read_json, run_jobs


def check(target: float, cap: float, min_move: float = 0.05) -> None:
    """One-line errors for a target difference, a cap or a movement threshold out of range."""
    if not (math.isfinite(float(min_move)) and 0 <= float(min_move) < 10):
        raise ConfigError(f"--min-move is a relative RankMe change >= 0 (e.g. 0.05 = 5%), got {min_move}")
    if not (math.isfinite(float(target)) and 0 < float(target) < 100):
        raise ConfigError(f"--target-diff is in kNN points, > 0 and < 100 (e.g. 0.5), got {target}")
    if not (math.isfinite(float(cap)) and 0 < float(cap) < 1):
        raise ConfigError(f"--holdout-cap is a fraction of the train split in (0, 1) (e.g. 0.2), got {cap}")


def pilot(spec, plan, source, first_epochs: float, ev: dict, ref_overrides: dict, out: Path, log) -> dict:
    """Run (or resume) the pilot; return ``tune.json``'s ``power`` dict (with ``first_epochs``: the
    first rung's length at which base-only's features moved by ``spec.min_move``)."""
    from e2mc.data.datasets import build_dataset

    n = len(source)
    n_cap = max(scoring.K, min(int(spec.holdout_cap * n), n - scoring.K))
    split = scoring.holdout_split(
        out / "pilot" / "split.json", str(spec.dataset), source.targets, n_cap, spec.seed, spec.train_images
    )
    bpe = max(1, len(build_dataset(str(split), "train")) // plan.batch)
    final = max(1, round(plan.space.epochs * bpe))
    steps = int(spec.pilot_steps) if spec.pilot_steps else max(1, round(first_epochs * bpe))
    over = {
        **plan.base,
        "data.dataset": str(split),
        "data.split": "train",
        "train.epochs": math.ceil(plan.space.epochs),  # the probes' LR schedule
        "train.checkpoint_every_epochs": 1000,
        **ref_overrides,
    }
    ev = {**ev, "dataset": str(split), "protocols": [NAME, "rankme"]}
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
    start, start_outcomes = _start_scores(spec.checkpoint, ev, out / "pilot" / "start.json")
    moved = []
    while True:  # lengthen the first rung (x eta, resuming) until base-only's features move
        rec = _pilot_ok(run_jobs([{**jobs[0], "steps": steps}], 1, log)[0], out)
        change = abs(rec["scores"][str(steps)]["rankme"] - start) / max(abs(start), 1e-12)
        moved.append({"steps": steps, "rankme_change": change})
        if spec.pilot_steps or change >= spec.min_move or steps >= final:
            break
        steps = min(final, steps * int(spec.eta))
    log(
        f"power pilot: base-only's RankMe moved {100 * change:.1f}% from the start's in {steps} steps "
        f"(needed {100 * spec.min_move:.0f}%); second training seed to {steps} steps"
    )
    recs = [rec, _pilot_ok(run_jobs([{**jobs[1], "steps": steps}], 1, log)[0], out)]
    a, b = (r["outcomes"][str(steps)] for r in recs)
    measured = paired.discordance(a, b)
    moved_images = paired.discordance(a, start_outcomes)
    # two arms that differ in their add-on disagree at least as much as two seeds of one arm, and
    # about as much as training moved the outcomes from the start's: the larger is used (conservative)
    p = max(measured, moved_images, 1 / n_cap)
    target = float(spec.target_diff) / 100
    needed = paired.images_needed(target, p)
    n_hold = int(spec.holdout) if spec.holdout is not None else max(scoring.K, min(needed, n_cap))
    return {
        "pilot_steps": steps,
        "first_epochs": steps / bpe,
        "train_seconds": round(sum(r["train_seconds"] for r in recs), 1),
        "moved": moved,
        "min_move": float(spec.min_move),
        "moved_enough": None if spec.pilot_steps else change >= spec.min_move,
        "pilot_images": n_cap,
        "discordance": measured,
        "discordance_vs_start": moved_images,
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


def twin(out: Path, overrides: dict) -> str | None:
    """The pilot probe folder trained with exactly ``overrides`` (a probe's ``twin``), or None."""
    for marker in sorted((Path(out) / "pilot").glob("seed*/probe.json")):
        rec = read_json(marker)
        if rec is not None and rec.get("overrides") == overrides:
            return str(marker.parent)
    return None


def _pilot_ok(rec: dict, out: Path) -> dict:
    """The pilot probe's record, or the one-line error of a base-only pilot that diverged (or that the
    collapse guard stopped): with base-only failing nothing can be paired."""
    f = rec.get("failed")
    if f is None:
        return rec
    raise TrainingDiverged(
        f"the power pilot (base-only at the reference probe's settings, {out / 'pilot'}) {failed_text(f)} "
        f"({f['reason'].split(': ', 1)[-1]}), so no probe can be paired with base-only; remove that LR from the "
        "space (or lower lr) and rerun"
    )


def first_rung_note(pw: dict, rungs: list) -> str:
    """Why the first rung is as long as it is (the pilot's log line and tune.md's sentence): ``rungs`` is
    the schedule after ``halving.lengthen_first``."""
    first, last = rungs[0].epochs, rungs[-1].epochs
    moved = pw.get("moved") or [{}]
    change = moved[-1].get("rankme_change")
    enough = pw.get("moved_enough")
    if "moved_enough" not in pw and change is not None and "min_move" in pw:  # a tune.json of an older e2mc
        enough = change >= pw["min_move"]
    need = f"{100 * pw.get('min_move', 0):.0f}%"
    if enough is False:
        return (
            f"base-only's held-out RankMe did not move by {need} from the start's within the last rung's length "
            f"({last:.3g} epochs, {pw['pilot_steps']} pilot steps; it moved {100 * change:.1f}%), so there is one "
            f"rung: every probe is trained to the end (the full grid)"
        )
    if enough is None:
        return f"the first rung is at least the pilot's {pw['pilot_steps']} steps: {first:.3g} epochs"
    return (
        f"base-only's held-out RankMe moved {100 * change:.1f}% (at least {need}) from the start's by "
        f"{pw['first_epochs']:.3g} epochs, so the first rung is at least that long: {first:.3g} epochs"
        + ("" if len(rungs) > 1 else " (one rung: the full grid)")
    )


def describe(pw: dict) -> str:
    """One sentence: the MDE, how it was measured, whether the target is reached."""
    reach = (
        "reaches"
        if pw["reaches_target"]
        else f"misses (the target needs {pw['images_needed']} images; the cap allows {pw['cap_images']})"
    )
    text = (
        f"minimum detectable paired kNN@20 difference {100 * pw['mde']:.2f} points (80% power, 5% level) "
        f"on {pw['held_out']} held-out images, from a per-image discordance of {100 * pw['discordance_used']:.1f}% "
        f"(pilot, {pw['pilot_steps']} steps: two base-only training seeds disagree on "
        f"{100 * pw['discordance']:.1f}% of the images, base-only and the start on {100 * pw['discordance_vs_start']:.1f}%); "
        f"it {reach} the target of {100 * pw['target']:.2f} points"
    )
    if pw.get("realised"):
        r = pw["realised"]
        text += (
            f"; after the search, the last rung's probes disagree with base-only on {100 * r['discordance']:.1f}% "
            f"of the images (median of {r['probes']}), so the realised minimum detectable difference is "
            f"{100 * r['mde']:.2f} points"
        )
    return text


def _start_scores(checkpoint, ev: dict, memo: Path) -> tuple[float, str]:
    """The start's backbone RankMe and per-image kNN outcomes on the pilot's held-out part (memoised)."""
    from e2mc.evaluation.api import evaluate, evaluation_settings
    from e2mc.fileio import atomic_write_json

    kw = {k: v for k, v in ev.items() if k not in ("dataset", "protocols")}
    old = read_json(memo)
    if old is not None and old.get("eval") == ev:
        return float(old["rankme"]), old["outcomes"]
    res = evaluate(str(checkpoint), ev["dataset"], (NAME, "rankme"), evaluation_settings(**kw))
    value, outcomes = float(res["rankme"]["backbone"]), res[NAME]["correct"]
    atomic_write_json(memo, {"eval": ev, "rankme": value, "outcomes": outcomes}, parents=True)
    return value, outcomes


def realised(last: dict, ref: str | None, n: int) -> dict | None:
    """After the search: the median discordance of the last rung's probes with base-only and the MDE it gives."""
    ds = sorted(
        (iv["n10"] + iv["n01"]) / iv["n"]
        for lab, pr in (last.get("paired") or {}).items()
        if lab != ref and (iv := pr.get("vs_base"))
    )
    if not ds:
        return None
    med = ds[len(ds) // 2] if len(ds) % 2 else (ds[len(ds) // 2 - 1] + ds[len(ds) // 2]) / 2
    return {"discordance": med, "mde": paired.mde(n, max(med, 1 / n)), "probes": len(ds)}
