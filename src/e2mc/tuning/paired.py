"""Paired comparison of probes on the SAME held-out images, and the power of that comparison.

Pure math on per-image outcomes (1 = the image is classified correctly, 0 = not), no I/O.
Two probes scored on the same ``n`` images differ only on their discordant images: ``n10`` (right
under ``a`` only) and ``n01`` (right under ``b`` only). Their accuracy difference is
``d = (n10 - n01) / n``.

* Interval (:func:`paired_interval`): the Wald interval of a difference of paired proportions
  (the McNemar setting), ``d +- z * sqrt((n10 + n01) / n - d**2) / sqrt(n)`` with ``z`` the
  normal quantile (``scipy.stats.norm``); its p-value is McNemar's exact test (``scipy.stats.binomtest``
  of ``n10`` among the ``n10 + n01`` discordant images, p = 0.5); no discordant image: ``[0, 0]``, p 1.
* Power (:func:`mde`): the smallest true difference the two-sided level-``alpha`` Wald test
  detects with probability ``power`` on ``n`` images whose discordance rate is ``p``:
  ``d = c * sqrt(p / (n + c**2))`` with ``c = z(1 - alpha/2) + z(power)`` (solving
  ``d = c * sqrt((p - d**2) / n)``); :func:`images_needed` inverts it.

Outcomes travel as strings of ``"0"``/``"1"`` (compact in JSON): :func:`encode` / :func:`decode`.
"""

from __future__ import annotations

import math

from e2mc.errors import DataError

ALPHA = 0.05
POWER = 0.8


def encode(correct) -> str:
    """Per-image outcomes (bools or 0/1) as a ``"0101..."`` string."""
    return "".join("1" if bool(c) else "0" for c in correct)


def decode(s: str) -> list[int]:
    """A ``"0101..."`` string as a list of 0/1."""
    if set(s) - {"0", "1"}:
        raise DataError("per-image outcomes must be a string of 0 and 1; rerun the tune in a fresh --out")
    return [int(c) for c in s]


def _counts(a, b) -> tuple[int, int, int]:
    a, b = decode(a) if isinstance(a, str) else list(a), decode(b) if isinstance(b, str) else list(b)
    if len(a) != len(b) or not a:
        raise DataError(
            f"paired outcomes need the same non-empty set of images (got {len(a)} and {len(b)}); score every "
            "probe on one held-out split (a fresh --out)"
        )
    n10 = sum(1 for x, y in zip(a, b) if x and not y)
    n01 = sum(1 for x, y in zip(a, b) if y and not x)
    return n10, n01, len(a)


def discordance(a, b) -> float:
    """Fraction of images on which the outcomes of ``a`` and ``b`` differ."""
    n10, n01, n = _counts(a, b)
    return (n10 + n01) / n


def paired_interval(a, b, confidence: float = 1 - ALPHA) -> dict:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same images, with its interval and McNemar p.

    Returns ``{"diff", "low", "high", "p", "n", "n10", "n01", "kind"}`` (fractions, not points).
    """
    from scipy.stats import binomtest, norm

    n10, n01, n = _counts(a, b)
    d = (n10 - n01) / n
    disc = n10 + n01
    if disc == 0:
        low = high = 0.0
        p = 1.0
    else:
        z = float(norm.ppf(0.5 + confidence / 2))
        half = z * math.sqrt(max(disc / n - d * d, 0.0) / n)
        low, high = d - half, d + half
        p = float(binomtest(n10, disc, 0.5).pvalue)
    kind = f"paired over {n} images: Wald interval, McNemar exact p"
    return {"diff": d, "low": low, "high": high, "p": p, "n": n, "n10": n10, "n01": n01, "kind": kind}


def _c(alpha: float, power: float) -> float:
    from scipy.stats import norm

    if not (0 < alpha < 1 and 0 < power < 1):
        raise DataError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def mde(n: int, p_disc: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable paired accuracy difference (a fraction) on ``n`` images with discordance ``p_disc``."""
    if n < 1 or not (0 <= p_disc <= 1):
        raise DataError(f"power needs n >= 1 images and a discordance rate in [0, 1], got {n} and {p_disc}")
    c = _c(alpha, power)
    return c * math.sqrt(p_disc / (n + c * c))


def images_needed(delta: float, p_disc: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """The fewest images on which a paired difference ``delta`` (a fraction) is detected at ``power``."""
    if not (0 < delta < 1):
        raise DataError(f"the target difference must be a fraction in (0, 1) (0.005 = 0.5 points), got {delta}")
    c = _c(alpha, power)
    return max(1, math.ceil(c * c * (p_disc - delta * delta) / (delta * delta)))
