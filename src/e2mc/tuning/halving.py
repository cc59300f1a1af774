"""Successive halving (Jamieson & Talwalkar 2016) with a budget in epochs of training data.

Pure functions, no I/O. With ``n`` probes, the longest probe ``max_epochs`` and ``eta`` (3), a
schedule of ``s + 1`` rungs trains, at rung ``k``, ``n_k = max(1, n // eta**k)`` probes up to
``r_k = max_epochs / eta**(s - k)`` epochs; after each rung the best ``n_{k+1}`` by the selection
score advance and are RESUMED from their checkpoint (a probe's cost is only the epochs it adds).
Cost = ``sum_k n_k * (r_k - r_{k-1})`` epochs (``r_{-1} = 0``). ``s = 0`` is the full grid
(every probe to ``max_epochs``; cost ``n * max_epochs``).

:func:`schedule` takes the FEWEST rungs whose cost fits the budget (more rungs = shorter first
probes = cheaper but noisier); without a budget, the most rungs (the cheapest schedule).

Example:
    >>> [(r.epochs, r.probes) for r in schedule(9, 2.0, budget=6)]
    [(0.2222222222222222, 9), (0.6666666666666666, 3), (2.0, 1)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from e2mc.errors import ConfigError


@dataclass(frozen=True)
class Rung:
    """One rung: ``probes`` probes trained up to ``epochs`` epochs."""

    index: int
    epochs: float
    probes: int


def rungs_for(n: int, max_epochs: float, s: int, eta: int = 3) -> list[Rung]:
    """The ``s + 1`` rungs of successive halving for ``n`` probes ending at ``max_epochs``."""
    return [Rung(k, max_epochs / eta ** (s - k), max(1, n // eta**k)) for k in range(s + 1)]


def cost(rungs: list[Rung]) -> float:
    """Epochs of training the rungs need, with every advancing probe resumed (not retrained)."""
    total, prev = 0.0, 0.0
    for r in rungs:
        total += r.probes * (r.epochs - prev)
        prev = r.epochs
    return total


def max_rungs(n: int, eta: int = 3) -> int:
    """The largest ``s`` whose last rung still has one probe from a halving: ``eta**s <= n``."""
    s = 0
    while eta ** (s + 1) <= n:
        s += 1
    return s


def schedule(n: int, max_epochs: float, budget: float | str | None = None, eta: int = 3) -> list[Rung]:
    """The rungs for ``n`` probes within ``budget`` epochs (None: the most rungs, the cheapest; "full": one rung).

    Raises ConfigError when even the schedule with the most rungs costs more than the budget.
    """
    if n < 2:
        raise ConfigError(f"successive halving needs at least 2 probes, got {n}")
    if eta < 2:
        raise ConfigError(f"eta must be >= 2, got {eta}")
    full = n * max_epochs
    if budget == "full":
        return rungs_for(n, max_epochs, 0, eta)
    if budget is None:
        return rungs_for(n, max_epochs, max_rungs(n, eta), eta)
    budget = float(budget)
    if not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--budget must be a number of epochs > 0 (or 'full'), got {budget}")
    for s in range(max_rungs(n, eta) + 1):
        rungs = rungs_for(n, max_epochs, s, eta)
        if cost(rungs) <= budget * (1 + 1e-9):
            return rungs
    cheapest = cost(rungs_for(n, max_epochs, max_rungs(n, eta), eta))
    raise ConfigError(
        f"--budget {budget:g} epochs is too small for one successive-halving schedule of {n} probes "
        f"(the cheapest costs {cheapest:.3g} epochs; the full grid {full:.3g}); raise --budget to at "
        f"least {cheapest:.3g}, or shrink the search space or its epochs"
    )


def lengthen_first(rungs: list[Rung], n: int, min_first: float, eta: int = 3) -> list[Rung]:
    """``rungs`` with as few rungs dropped (from the short end) as make the first at least ``min_first``
    epochs (the last rung's length stays; one rung at most: the full grid)."""
    s, last = len(rungs) - 1, rungs[-1].epochs
    while s > 0 and last / eta**s < min_first * (1 - 1e-9):
        s -= 1
    return rungs_for(n, last, s, eta)


def advance(scores: dict[str, float], keep: int, order: list[str] | None = None) -> list[str]:
    """The ``keep`` labels with the highest score (NaN/None last; ties: earlier in ``order``)."""
    order = list(order) if order is not None else list(scores)
    pos = {lab: i for i, lab in enumerate(order)}

    def key(lab):
        v = scores[lab]
        bad = v is None or (isinstance(v, float) and math.isnan(v))
        return (bad, 0.0 if bad else -v, pos.get(lab, len(pos)))

    return sorted(scores, key=key)[:keep]
