"""The one place where e2mc computes spreads and intervals (compare, the demo, the benchmarks).

All intervals are two-sided Student-t intervals from ``scipy.stats``:

* :func:`summarize`: one sample, ``ttest_1samp(xs, 0).confidence_interval``;
* :func:`paired_difference`: ``ttest_rel(b, a).confidence_interval`` (same seeds, same order);
* :func:`welch_difference`: ``ttest_ind(b, a, equal_var=False).confidence_interval``;
* :func:`difference`: the rule every table uses — paired by training seed when both arms have
  the same set of (known, distinct) training seeds, Welch otherwise — with a ``kind`` label
  (``"paired, n=3"``, ``"Welch, n=3 vs 2"``, ``"n=1: no interval"``).

With a single value (n = 1) the std and interval are ``None``: one number carries no spread.
Values without spread (std 0 up to float rounding) give the degenerate interval ``[mean, mean]``
(scipy would give NaN or warn about precision loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from e2mc.errors import DataError


@dataclass
class Summary:
    """Mean, sample std (ddof=1), n and a two-sided confidence interval ``(low, high)``.

    For differences: ``std`` is the std of the paired differences (paired) or the standard
    error of the difference (Welch); ``kind`` says which test made the interval.
    """

    mean: float
    std: float | None
    n: int
    low: float | None
    high: float | None
    kind: str = ""

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-friendly)."""
        return asdict(self)


def _values(xs: Sequence[float], what: str) -> list[float]:
    vals = [float(x) for x in xs]
    if not vals:
        raise DataError(f"{what}: no values given; run at least one seed")
    if any(math.isnan(v) for v in vals):
        raise DataError(f"{what}: NaN among the values {vals}; a run failed, rerun it")
    return vals


def _mean_std(vals: list[float]) -> tuple[float, float | None]:
    n = len(vals)
    mean = math.fsum(vals) / n
    return mean, (math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None)


def _flat(std: float, mean: float) -> bool:
    return std <= 1e-12 * max(1.0, abs(mean))


def summarize(xs: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, std (ddof=1) and the t-interval of the mean (``scipy.stats.ttest_1samp``)."""
    from scipy import stats

    vals = _values(xs, "summarize")
    mean, std = _mean_std(vals)
    if std is None:
        return Summary(mean, None, 1, None, None, "n=1: no interval")
    if _flat(std, mean):
        return Summary(mean, 0.0, len(vals), mean, mean, f"t, n={len(vals)}")
    ci = stats.ttest_1samp(vals, 0.0).confidence_interval(confidence)
    return Summary(mean, std, len(vals), float(ci.low), float(ci.high), f"t, n={len(vals)}")


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Summary:
    """Interval for mean(b - a) from paired values (same seeds, same order): ``ttest_rel(b, a)``."""
    from scipy import stats

    va, vb = _values(a, "paired_difference a"), _values(b, "paired_difference b")
    if len(va) != len(vb):
        raise DataError(f"paired_difference: {len(va)} vs {len(vb)} values; pairing needs the same seeds for both arms")
    diffs = [y - x for x, y in zip(va, vb)]
    mean, std = _mean_std(diffs)
    n = len(diffs)
    if std is None:
        return Summary(mean, None, 1, None, None, "n=1: no interval")
    if _flat(std, mean):
        if mean == 0:  # identical arms: no difference, and nothing to doubt
            return Summary(mean, 0.0, n, mean, mean, f"paired, n={n}")
        # the same non-zero difference in every pair (discrete outcomes on a small test set): the
        # t-interval is 0/0, not certainty; no interval rather than a zero-width one "above zero"
        return Summary(mean, 0.0, n, None, None, f"paired, n={n}, the same difference with every seed")
    ci = stats.ttest_rel(vb, va).confidence_interval(confidence)
    return Summary(mean, std, n, float(ci.low), float(ci.high), f"paired, n={n}")


def welch_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Summary:
    """Welch interval for mean(b) - mean(a) from unpaired samples: ``ttest_ind(b, a, equal_var=False)``.

    ``std`` of the result is the standard error of the difference; ``n`` is ``min(n_a, n_b)``.
    """
    from scipy import stats

    va, vb = _values(a, "welch_difference a"), _values(b, "welch_difference b")
    (ma, sa), (mb, sb) = _mean_std(va), _mean_std(vb)
    diff, n = mb - ma, min(len(va), len(vb))
    if sa is None or sb is None:
        return Summary(diff, None, n, None, None, "n=1: no interval")
    kind = f"Welch, n={len(vb)} vs {len(va)}"
    se = math.sqrt(sa**2 / len(va) + sb**2 / len(vb))
    if _flat(se, diff):
        return Summary(diff, 0.0, n, diff, diff, kind)
    ci = stats.ttest_ind(vb, va, equal_var=False).confidence_interval(confidence)
    return Summary(diff, se, n, float(ci.low), float(ci.high), kind)


def _seed_keys(seeds) -> list | None:
    if seeds is None or any(s is None for s in seeds) or len(set(seeds)) != len(seeds):
        return None
    return list(seeds)


def difference(
    ref: Sequence[float] | Mapping,
    arm: Sequence[float] | Mapping,
    ref_seeds: Sequence | None = None,
    arm_seeds: Sequence | None = None,
    confidence: float = 0.95,
) -> Summary:
    """``arm - ref``: paired by training seed when both arms have the same set of seeds, else Welch.

    ``ref`` / ``arm`` are value lists with their seeds in ``ref_seeds`` / ``arm_seeds`` (None or a
    None entry: unknown), or dicts ``{seed: value}``. Pairing needs the same set of distinct,
    known seeds on both sides and at least two of them; otherwise Welch over the two samples.
    Either side with a single value: the difference of means with no interval.
    """
    if isinstance(ref, Mapping):
        ref, ref_seeds = list(ref.values()), list(ref)
    if isinstance(arm, Mapping):
        arm, arm_seeds = list(arm.values()), list(arm)
    ra, aa = _seed_keys(ref_seeds), _seed_keys(arm_seeds)
    if (
        ra is not None
        and aa is not None
        and len(ra) == len(ref)
        and len(aa) == len(arm)
        and set(ra) == set(aa)
        and len(ra) > 1
    ):
        by_ref = dict(zip(ra, ref))
        by_arm = dict(zip(aa, arm))
        order = sorted(ra, key=str)
        return paired_difference([by_ref[s] for s in order], [by_arm[s] for s in order], confidence)
    return welch_difference(ref, arm, confidence)


# ------------------------------------------------------------------ formatting (one rule for every output)
SIGNIFICANT = 4  # digits of a mean that are shown; its std, differences and intervals use the same decimals
_MAX_DECIMALS = 8


def decimals_for(ref: float | None, percent: bool = False) -> int:
    """Decimals that show ``ref`` with :data:`SIGNIFICANT` significant digits (percentages: always 2).

    ``decimals_for(15.56) == 2``, ``decimals_for(0.002351) == 6``, ``decimals_for(1234.5) == 0``.
    """
    if percent:
        return 2
    if ref is None or not math.isfinite(ref) or ref == 0:
        return SIGNIFICANT
    return int(min(_MAX_DECIMALS, max(0, SIGNIFICANT - 1 - math.floor(math.log10(abs(ref))))))


def fmt_number(x: float | None, places: int, sign: bool = False) -> str:
    """Fixed-point text of ``x`` with ``places`` decimals, never e-notation, no ``-0.00``; "n/a" for None/NaN."""
    if x is None or not math.isfinite(x):
        return "n/a"
    text = f"{x:{'+' if sign else ''}.{places}f}"
    if float(text) == 0:  # -0.00 -> 0.00 (+0.00 with sign)
        text = f"{0.0:{'+' if sign else ''}.{places}f}"
    return text


def fmt_estimate(mean: float, std: float | None = None, n: int | None = None, *, percent: bool = False) -> str:
    """``"mean ± std (n)"`` with std rounded to the mean's precision; ``percent`` scales fractions by 100."""
    k = 100.0 if percent else 1.0
    places = decimals_for(k * mean, percent)
    text = fmt_number(k * mean, places)
    if std is not None:
        text += f" ± {fmt_number(k * std, places)}"
    return text + ("" if n is None else f" ({n})")


def fmt_difference(
    diff: float, low: float | None = None, high: float | None = None, *, ref: float | None = None, percent: bool = False
) -> str:
    """``"+d [+low, +high]"`` (signed), rounded to the precision of ``ref`` (the compared means; default
    ``diff`` itself) so that a difference reads in the same units as the cells it compares."""
    k = 100.0 if percent else 1.0
    places = decimals_for(k * (ref if ref is not None else diff), percent)
    text = fmt_number(k * diff, places, sign=True)
    if low is not None and high is not None:
        text += f" [{fmt_number(k * low, places, sign=True)}, {fmt_number(k * high, places, sign=True)}]"
    return text
