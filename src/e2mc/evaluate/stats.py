"""Summary statistics over seeds: mean, std, t-intervals, paired and Welch differences.

All intervals are two-sided with Student's t quantiles (``scipy.stats.t``). With a single
value (n = 1) the std and interval are ``None``: one number carries no spread.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from e2mc.errors import DataError


@dataclass
class Summary:
    """Mean, sample std (ddof=1), n and a two-sided confidence interval ``(low, high)``."""

    mean: float
    std: float | None
    n: int
    low: float | None
    high: float | None

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


def _tq(confidence: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2.0, df))


def summarize(xs: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, std (ddof=1) and t-interval ``mean +- t_{(1+c)/2, n-1} * std / sqrt(n)``."""
    vals = _values(xs, "summarize")
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return Summary(mean, None, n, None, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = _tq(confidence, n - 1) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Summary:
    """Interval for mean(b - a) from paired values (same seeds, same order)."""
    va, vb = _values(a, "paired_difference a"), _values(b, "paired_difference b")
    if len(va) != len(vb):
        raise DataError(f"paired_difference: {len(va)} vs {len(vb)} values; pairing needs the same seeds for both arms")
    return summarize([y - x for x, y in zip(va, vb)], confidence)


def welch_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Summary:
    """Welch interval for mean(b) - mean(a) from unpaired samples (unequal variances).

    ``std`` of the result is the standard error of the difference; ``n`` is ``min(n_a, n_b)``.
    """
    va, vb = _values(a, "welch_difference a"), _values(b, "welch_difference b")
    sa, sb = summarize(va), summarize(vb)
    diff = sb.mean - sa.mean
    if sa.n < 2 or sb.n < 2:
        return Summary(diff, None, min(sa.n, sb.n), None, None)
    qa, qb = sa.std**2 / sa.n, sb.std**2 / sb.n
    se = math.sqrt(qa + qb)
    if se == 0:
        return Summary(diff, 0.0, min(sa.n, sb.n), diff, diff)
    df = (qa + qb) ** 2 / (qa**2 / (sa.n - 1) + qb**2 / (sb.n - 1))
    half = _tq(confidence, df) * se
    return Summary(diff, se, min(sa.n, sb.n), diff - half, diff + half)
