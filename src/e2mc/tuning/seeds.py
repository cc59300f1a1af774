"""Seed noise at the last rung: the leaders and base-only again with other training seeds.

After the last rung, the leader, up to ``eta - 1`` probes that cannot be told from it and base-only
are trained again from the start with training seeds ``seed + 1, ...`` (``final_seeds - 1`` more), to
the last rung's steps, in ``OUT/probes/<label>-seed<S>/``, and scored on the same held-out images.
Each seed's probes are compared with base-only of the SAME seed (paired over images); a probe is
chosen only if its interval to base-only lies above zero with every seed (:func:`worst_case`). A seed's
probe that diverges (or that the collapse guard stops) has no interval with that seed, so it is not
chosen; base-only failing with a seed leaves every probe without one, and base-only is kept.
"""

from __future__ import annotations

from pathlib import Path

from e2mc.tuning import halving, select
from e2mc.tuning.power import twin
from e2mc.tuning.probes import failed_line, run_jobs


def leaders(last: dict, ref: str | None, eta: int) -> list[str]:
    """The last rung's leader, up to ``eta - 1`` probes whose interval to it holds 0 (by score), and ``ref``."""
    pairs = last.get("paired") or {}
    close = [
        lab
        for lab in last["probes"]
        if lab not in (ref, last.get("leader"))
        and (pairs.get(lab) or {}).get("vs_leader")
        and pairs[lab]["vs_leader"]["low"] <= 0 <= pairs[lab]["vs_leader"]["high"]
    ]
    close = halving.advance({lab: last["scores"][lab] for lab in close}, max(0, eta - 1), last["probes"])
    keep = {last.get("leader"), ref, *close} - {None}
    return [lab for lab in last["probes"] if lab in keep]


def run_seeds(labels, by_label, probe_over: dict, steps: int, seeds, ev: dict, spec, plan, out: Path, log) -> dict:
    """Train and score ``labels`` with each extra training seed; ``{seed: {label: record}}``."""
    done = {}
    for s in seeds:
        jobs = [
            {
                "label": f"{lab}-seed{s}",
                "dir": str(out / "probes" / f"{lab}-seed{s}"),
                "source": spec.recipe,
                "overrides": {**probe_over, **by_label[lab].overrides, "train.seed": int(s)},
                "twin": twin(out, {**probe_over, **by_label[lab].overrides, "train.seed": int(s)}),
                "steps": steps,
                "eval": ev,
                "threads": plan.threads,
            }
            for lab in labels
        ]
        log(f"training seed {s}: {', '.join(labels)} to {steps} steps")
        done[s] = dict(zip(labels, run_jobs(jobs, plan.workers, log)))
        for rec in done[s].values():
            if rec.get("failed"):
                log(failed_line(rec["label"], rec["failed"]))
    return done


def seed_rung(records: dict, steps: int, rule_score, ref: str | None, order: list) -> dict:
    """One extra seed's scores, leader and paired intervals (as a rung's entry; a failed probe has
    none and is listed under ``failed``)."""
    failed = {lab: rec["failed"] for lab, rec in records.items() if rec.get("failed")}
    ok = {lab: rec for lab, rec in records.items() if lab not in failed}
    scores = {lab: rule_score(rec["scores"][str(steps)]) for lab, rec in ok.items()}
    outcomes = {lab: (rec.get("outcomes") or {}).get(str(steps)) for lab, rec in ok.items()}
    linear = {lab: (rec.get("linear_outcomes") or {}).get(str(steps)) for lab, rec in ok.items()}
    leader, pairs = select.rung_pairs(outcomes, scores, ref, order, linear)
    entry = {"probes": [lab for lab in order if lab in records], "scores": scores, "leader": leader, "paired": pairs}
    if failed:
        entry["failed"] = failed
    return entry


def worst_case(pair_sets: list[dict]) -> dict:
    """Per label, the interval to base-only with the lowest lower end across seeds (None if any seed lacks one)."""
    out = {}
    for lab in pair_sets[0]:
        ivs = [(ps.get(lab) or {}).get("vs_base") for ps in pair_sets]
        worst = None if any(iv is None for iv in ivs) else min(ivs, key=lambda iv: iv["low"])
        out[lab] = {"vs_base": worst, "vs_leader": pair_sets[0][lab].get("vs_leader")}
    return out
