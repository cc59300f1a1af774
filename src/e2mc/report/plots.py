"""PNG plots for the report (matplotlib, Agg backend): training curves, accuracy per arm,
singular-value spectra and histograms of mapped marginals."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

NON_CURVE_COLUMNS = {"wall_time", "epoch", "step", "phase", "lr", "img_per_s"}
METRIC_COLUMNS = ("rankme", "rankme_proj", "entropy", "uniformity")


def read_metrics_csv(path: str | Path) -> list[dict]:
    """Rows of a run's ``metrics.csv`` as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def curve_columns(runs: Mapping[str, list[dict]]) -> list[str]:
    """Numeric columns worth plotting over training: loss terms first, then label-free metrics.
    A column that holds one value in every run (e.g. ``addon.m``, or ``addon.tied`` at 0) is left out."""
    cols: list[str] = []
    for rows in runs.values():
        for c in (rows[0].keys() if rows else []):
            if c not in NON_CURVE_COLUMNS and c not in cols and any(_num(r.get(c)) is not None for r in rows):
                cols.append(c)
    cols = [c for c in cols if len({_num(r.get(c)) for rows in runs.values() for r in rows} - {None}) > 1]
    return [c for c in cols if c not in METRIC_COLUMNS] + [c for c in METRIC_COLUMNS if c in cols]


def plot_training_curves(runs: Mapping[str, list[dict]], path: str | Path) -> Path | None:
    """One panel per loss term / label-free metric, x = epoch (fractional by step when present)."""
    cols = curve_columns(runs)
    if not cols:
        return None
    ncol = min(3, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    # one colour per run in every panel (a run without a column, e.g. no add-on, leaves a gap)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(runs)}
    for ax, col in zip(axes.flat, cols):
        for name, rows in runs.items():
            pts = [(_num(r.get("step")) if _num(r.get("step")) is not None else _num(r.get("epoch")), _num(r.get(col)))
                   for r in rows]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=name, color=colours[name])
        ax.set_title(col)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[n], marker="o", ms=3, label=n) for n in runs]
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=min(3, len(handles)))
    fig.suptitle("Training: loss terms and label-free metrics", x=0.3, ha="left")
    return _save(fig, path)


def plot_accuracy(arms: Sequence[str], metrics: Sequence[str], rows: Sequence[dict], path: str | Path) -> Path | None:
    """Grouped bars (one group per metric, one bar per arm) with 95% t-interval error bars
    (none when n=1). ``rows`` are comparison rows with arm, metric, mean, low, high."""
    metrics = list(metrics)
    if not metrics:
        return None
    width = 0.8 / max(len(arms), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(metrics) * max(1, len(arms)) / 2 + 2), 3.8))
    x = np.arange(len(metrics))
    for i, arm in enumerate(arms):
        means, errs = [], [[], []]
        for m in metrics:
            r = next((r for r in rows if r["arm"] == arm and r["metric"] == m), None)
            mean = r["mean"] if r else np.nan
            means.append(mean)
            lo = mean - r["low"] if r and r.get("low") is not None else np.nan  # n=1: no bar
            hi = r["high"] - mean if r and r.get("high") is not None else np.nan
            errs[0].append(lo)
            errs[1].append(hi)
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, means, width, yerr=errs, capsize=3, label=arm)
    ax.set_xticks(x, [m.replace("/", "\n") for m in metrics], fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(arms)), frameon=False)
    ax.set_title("Accuracy per arm (bars: 95% t-interval over seeds)")
    return _save(fig, path)


def plot_spectra(spectra: Mapping[str, Sequence[float]], path: str | Path) -> Path | None:
    """Normalised singular values s_k / s_1 against k, log scale, one line per arm."""
    if not spectra:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, s in spectra.items():
        s = np.asarray(s, dtype=float)
        if s.size and s[0] > 0:
            ax.plot(np.arange(1, s.size + 1), s / s[0], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("index k")
    ax.set_ylabel("s_k / s_1")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("Singular-value spectrum of the embeddings")
    return _save(fig, path)


def plot_marginals(marginals: Mapping[str, np.ndarray], path: str | Path, max_dims: int = 4) -> Path | None:
    """Histograms of a few mapped marginals (values in (0, 1)), arms overlaid, one panel per dim.

    ``marginals``: name -> array (N, d) of mapped values (e.g. sigmoid of projector dims).
    """
    if not marginals:
        return None
    arrs = {k: np.asarray(v, dtype=float).reshape(len(v), -1) for k, v in marginals.items()}
    d = min(max_dims, min(a.shape[1] for a in arrs.values()))
    fig, axes = plt.subplots(1, d, figsize=(3.2 * d, 2.9), squeeze=False)
    bins = np.linspace(0, 1, 31)
    for j, ax in enumerate(axes.flat):
        for name, a in arrs.items():
            ax.hist(a[:, j], bins=bins, density=True, histtype="step", linewidth=1.8, label=name)
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="uniform")
        ax.set_title(f"dim {j}")
        ax.set_xlim(0, 1)
        ax.set_xlabel("mapped value")
    axes.flat[0].set_ylabel("density")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=len(labels))
    fig.suptitle("Mapped marginals (uniform = maximal entropy)")
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
