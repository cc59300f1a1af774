"""Paired scoring and detection power, against independent numpy computations and a simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from e2mc.errors import DataError
from e2mc.tuning import paired, select
from e2mc.tuning.scoring import kendall

Z975, Z80 = 1.959963984540054, 0.8416212335729143  # normal quantiles, written out (not from scipy)


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 0.5 (sum of outcomes no more likely than k), in plain Python."""
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-7)))


def test_paired_interval_matches_a_numpy_mcnemar():
    rng = np.random.default_rng(3)
    a = rng.random(400) < 0.6
    b = np.where(rng.random(400) < 0.2, ~a, a)  # b differs from a on about 20% of the images
    got = paired.paired_interval(paired.encode(a), paired.encode(b))
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    d = (a.astype(float) - b.astype(float)).mean()
    se = np.sqrt(((a.astype(float) - b.astype(float)) ** 2).mean() - d**2) / np.sqrt(400)
    assert (got["n10"], got["n01"], got["n"]) == (n10, n01, 400)
    assert got["diff"] == pytest.approx(a.mean() - b.mean())
    assert got["low"] == pytest.approx(d - Z975 * se) and got["high"] == pytest.approx(d + Z975 * se)
    assert got["p"] == pytest.approx(_binom_two_sided(n10, n10 + n01))


def test_identical_outcomes_give_a_zero_interval_and_p_one():
    got = paired.paired_interval("0110", "0110")
    assert (got["diff"], got["low"], got["high"], got["p"]) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("a, b", [("01", "011"), ("", ""), ("0x1", "011")])
def test_mismatched_or_bad_outcomes_are_one_line_errors(a, b):
    with pytest.raises(DataError, match="--out"):
        paired.paired_interval(a, b)


def test_mde_formula_by_hand_and_inverse():
    c = Z975 + Z80
    assert paired.mde(2500, 0.1) == pytest.approx(c * math.sqrt(0.1 / (2500 + c * c)))
    n = paired.images_needed(0.005, 0.1)
    assert paired.mde(n, 0.1) <= 0.005 < paired.mde(n - 1, 0.1)


def test_power_formula_against_a_simulation():
    """At the MDE, the Wald test of the paired difference rejects in about 80% of simulated held-out sets."""
    n, p_disc = 2000, 0.12
    d = paired.mde(n, p_disc)
    p10, p01 = (p_disc + d) / 2, (p_disc - d) / 2
    rng = np.random.default_rng(0)
    counts = rng.multinomial(n, [p10, p01, 1 - p_disc], size=20000)
    diff = (counts[:, 0] - counts[:, 1]) / n
    se = np.sqrt((counts[:, 0] + counts[:, 1]) / n - diff**2) / np.sqrt(n)
    power = float(np.mean(np.abs(diff / se) > Z975))
    assert power == pytest.approx(0.8, abs=0.015)  # binomial SE of the estimate: 0.003
    half = paired.mde(n, p_disc) / 2  # half the MDE is detected far less often
    p10, p01 = (p_disc + half) / 2, (p_disc - half) / 2
    counts = rng.multinomial(n, [p10, p01, 1 - p_disc], size=20000)
    diff = (counts[:, 0] - counts[:, 1]) / n
    se = np.sqrt((counts[:, 0] + counts[:, 1]) / n - diff**2) / np.sqrt(n)
    assert float(np.mean(np.abs(diff / se) > Z975)) < 0.4


def _outcomes(rng, base, flip):
    return paired.encode(np.where(rng.random(base.size) < flip, ~base, base))


def test_selection_prefers_an_interval_above_zero_and_says_when_nothing_is_distinguishable():
    rng = np.random.default_rng(1)
    base = rng.random(3000) < 0.5
    order = ["base-only", "good", "noise"]
    better = base | (rng.random(3000) < 0.1)  # about 5 points more right
    outs = {"base-only": paired.encode(base), "good": paired.encode(better), "noise": _outcomes(rng, base, 0.02)}
    scores = {lab: sum(map(int, o)) / 3000 for lab, o in outs.items()}
    addon = {"base-only": "none", "good": "e2mc", "noise": "vc"}
    leader, pairs = select.rung_pairs(outs, scores, "base-only", order)
    assert leader == "good" and pairs["base-only"]["vs_base"] is None and pairs["good"]["vs_leader"] is None
    assert pairs["good"]["vs_base"]["low"] > 0
    got = select.choose(scores, pairs, "base-only", addon, order)
    assert got["label"] == "good" and got["distinguishable"] and "beats base-only" in got["verdict"]
    # without the good probe: the noise probe may score higher, but its interval reaches zero
    outs2 = {k: outs[k] for k in ("base-only", "noise")}
    scores2 = {k: scores[k] for k in outs2}
    _, pairs2 = select.rung_pairs(outs2, scores2, "base-only", order)
    got = select.choose(scores2, pairs2, "base-only", addon, order)
    assert got["label"] == "base-only" and got["distinguishable"] is False
    assert "no probe is distinguishable" in got["verdict"]


def test_halving_keeps_base_only_and_every_probe_it_cannot_tell_from_the_leader():
    rng = np.random.default_rng(2)
    base = rng.random(2000) < 0.5
    order = ["base-only", "a", "b", "c"]
    outs = {
        "base-only": paired.encode(base),
        "a": paired.encode(base | (rng.random(2000) < 0.2)),  # the clear leader
        "b": _outcomes(rng, base | (rng.random(2000) < 0.2), 0.01),  # close to the leader
        "c": paired.encode(base & (rng.random(2000) < 0.7)),  # clearly worse
    }
    scores = {lab: sum(map(int, o)) / 2000 for lab, o in outs.items()}
    leader, pairs = select.rung_pairs(outs, scores, "base-only", order)
    kept = select.survivors(scores, 1, order, "base-only", pairs)
    assert leader in ("a", "b") and set(kept) == {"base-only", "a", "b"}
    assert pairs["c"]["vs_leader"]["high"] < 0  # dropped: distinguishable from the leader


def test_kendall_marks_too_few_probes():
    vals = {str(i): {"knn_top1_k20": i / 10, "rankme": float(i)} for i in range(4)}
    assert kendall(vals, rules=("rankme",))["rankme"]["too_few"] is True  # best p = 2/4! = 0.083
    vals["4"] = {"knn_top1_k20": 0.4, "rankme": 4.0}
    got = kendall(vals, rules=("rankme",))["rankme"]
    assert got["too_few"] is False and got["p"] < 0.05


def test_a_probe_must_beat_base_only_with_every_training_seed():
    from e2mc.tuning import seeds

    up = {"diff": 0.05, "low": 0.01, "high": 0.09}
    flat = {"diff": 0.02, "low": -0.01, "high": 0.05}
    seed0 = {"none": {"vs_base": None, "vs_leader": up}, "mmcr": {"vs_base": up, "vs_leader": None}}
    seed1 = {"none": {"vs_base": None, "vs_leader": up}, "mmcr": {"vs_base": flat, "vs_leader": None}}
    worst = seeds.worst_case([seed0, seed1])
    assert worst["mmcr"]["vs_base"] == flat and worst["none"]["vs_base"] is None
    addon = {"none": "none", "mmcr": "mmcr"}
    assert select.choose({"none": 0.8, "mmcr": 0.85}, seed0, "none", addon, ["none", "mmcr"])["label"] == "mmcr"
    got = select.choose({"none": 0.8, "mmcr": 0.85}, worst, "none", addon, ["none", "mmcr"])
    assert got["label"] == "none" and got["distinguishable"] is False


def test_leaders_are_the_leader_the_close_probes_and_base_only():
    from e2mc.tuning import seeds

    close = {"low": -0.02, "high": 0.01}
    far = {"low": -0.09, "high": -0.03}
    last = {
        "probes": ["none", "a", "b", "c", "d"],
        "leader": "a",
        "scores": {"none": 0.5, "a": 0.9, "b": 0.88, "c": 0.87, "d": 0.6},
        "paired": {
            "none": {"vs_leader": far},
            "a": {"vs_leader": None},
            "b": {"vs_leader": close},
            "c": {"vs_leader": close},
            "d": {"vs_leader": far},
        },
    }
    assert seeds.leaders(last, "none", eta=3) == ["none", "a", "b", "c"]
    assert seeds.leaders(last, "none", eta=2) == ["none", "a", "b"]  # at most eta - 1 close probes
