"""Paired selection: each rung's differences to base-only and to the leader, who advances, who is chosen.

Pure functions over one rung's per-image held-out outcomes (``tuning.paired``), no I/O.

* :func:`rung_pairs`: for every probe, its paired difference (95% Wald interval, McNemar p) to the
  base-only reference (the first ``none`` probe of the space) and to the rung's leader (highest score),
  and its linear probe's paired difference to base-only's (reported, not used to select).
* :func:`survivors`: successive halving's top ``keep`` plus the reference (the control every later
  rung is compared with) plus every probe whose paired interval to the leader contains 0 (halving
  never drops a probe it cannot tell from the leader).
* :func:`choose`: the highest-scoring add-on probe of the last rung whose interval to base-only lies
  above zero; none such: base-only, with the plain statement that no probe is distinguishable.
"""

from __future__ import annotations

from e2mc.tuning import halving
from e2mc.tuning.paired import paired_interval


def reference_label(points) -> str | None:
    """The base-only probe every other is compared with: the first point with add-on ``none``."""
    return next((p.label for p in points if p.addon == "none"), None)


def rung_pairs(
    outcomes: dict, scores: dict, ref: str | None, order: list, linear: dict | None = None
) -> tuple[str | None, dict]:
    """``(leader, {label: {"vs_base": interval or None, "vs_leader": interval or None,
    "linear_vs_base": interval or None}})`` for one rung. ``linear``: each probe's per-image
    linear-probe outcomes (a secondary check, never selecting); ``linear_vs_base`` is None where the
    probe's or base-only's are absent (a probe scored by an older e2mc)."""
    linear = linear or {}
    have = [lab for lab in order if lab in scores and outcomes.get(lab)]
    leader = halving.advance({lab: scores[lab] for lab in have}, 1, order)[0] if have else None
    out = {}
    for lab in [lab for lab in order if lab in scores]:
        o, lo, lref = outcomes.get(lab), linear.get(lab), linear.get(ref)
        vs_base = paired_interval(o, outcomes[ref]) if o and ref in have and lab != ref else None
        vs_lead = paired_interval(o, outcomes[leader]) if o and leader and lab != leader else None
        lin = paired_interval(lo, lref) if lo and lref and lab != ref else None
        out[lab] = {"vs_base": vs_base, "vs_leader": vs_lead, "linear_vs_base": lin}
    return leader, out


def survivors(scores: dict, keep: int, order: list, ref: str | None, pairs: dict | None) -> list[str]:
    """The probes that go on to the next rung, in ``order``."""
    top = set(halving.advance(scores, keep, order))
    if ref in scores:
        top.add(ref)
    for lab, pr in (pairs or {}).items():
        iv = pr.get("vs_leader")
        if iv is not None and iv["low"] <= 0 <= iv["high"]:
            top.add(lab)
    return [lab for lab in order if lab in top]


def choose(scores: dict, pairs: dict, ref: str | None, addon_of: dict, order: list) -> dict:
    """The chosen label, whether it is distinguishable from base-only, and the verdict (one sentence)."""
    if ref is None or ref not in scores or not pairs:
        best = halving.advance(scores, 1, order)[0]
        why = (
            "no base-only probe to compare with"
            if ref is None or ref not in scores
            else "no paired held-out comparison: label-free selection or no labels"
        )
        return {"label": best, "distinguishable": None, "verdict": f"highest score chosen ({why}): {best}"}
    above = [
        lab
        for lab in scores
        if addon_of.get(lab) != "none" and (pairs.get(lab) or {}).get("vs_base") and pairs[lab]["vs_base"]["low"] > 0
    ]
    if above:
        best = halving.advance({lab: scores[lab] for lab in above}, 1, order)[0]
        iv = pairs[best]["vs_base"]
        return {
            "label": best,
            "distinguishable": True,
            "verdict": (
                f"{best} beats base-only on the held-out images: {100 * iv['diff']:+.2f} kNN@20 points "
                f"[{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}] (paired, 95%)"
            ),
        }
    return {
        "label": ref,
        "distinguishable": False,
        "verdict": (
            "no probe is distinguishable from base-only: every paired 95% interval to base-only reaches "
            "zero or below, so base-only is kept (this says nothing helps by more than the detectable difference, "
            "not that nothing helps)"
        ),
    }
