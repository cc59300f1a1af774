"""PNG plots for the report (matplotlib, Agg backend): training curves, accuracy per arm, the
risk decomposition per arm, singular-value spectra and histograms of mapped marginals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

NON_CURVE_COLUMNS = {"wall_time", "epoch", "step", "phase", "lr", "img_per_s"}
METRIC_COLUMNS = ("rankme", "rankme_proj", "entropy", "uniformity")


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
        for c in rows[0].keys() if rows else []:
            if c not in NON_CURVE_COLUMNS and c not in cols and any(_num(r.get(c)) is not None for r in rows):
                cols.append(c)
    cols = [c for c in cols if len({_num(r.get(c)) for rows in runs.values() for r in rows} - {None}) > 1]
    return [c for c in cols if c not in METRIC_COLUMNS] + [c for c in METRIC_COLUMNS if c in cols]


Y_LABELS = {
    "loss": "total loss",
    "base": "base (SSL) loss",
    "addon": "add-on loss (weighted)",
    "addon.entropy": "E2MC entropy term (nats)",
    "addon.covariance": "E2MC covariance term",
    "addon.saturated": "fraction saturated",
    "addon.tied": "fraction tied",
    "rankme": "RankMe, backbone (eff. rank)",
    "rankme_proj": "RankMe, projector (eff. rank)",
    "entropy": "marginal entropy (nats)",
    "uniformity": "uniformity (lower: more uniform)",
}


def y_label(col: str) -> str:
    """Axis label of a metrics.csv column (loss terms: which loss they belong to)."""
    if col in Y_LABELS:
        return Y_LABELS[col]
    head, _, tail = col.partition(".")
    return {"base": f"base loss: {tail}", "addon": f"add-on: {tail}"}.get(head, col) if tail else col


def run_colours(arms: Mapping[str, str]) -> dict[str, tuple]:
    """Run name -> RGB: one hue per arm (in order of appearance), lighter shades for its later runs."""
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    hue = {}
    for arm in arms.values():
        hue.setdefault(arm, matplotlib.colors.to_rgb(palette[len(hue) % len(palette)]))
    out, seen = {}, {}
    for run, arm in arms.items():
        k = seen[arm] = seen.get(arm, -1) + 1
        n = sum(1 for a in arms.values() if a == arm)
        mix = 0.55 * k / max(n - 1, 1) if n > 1 else 0.0  # 0: the arm's colour; up to 55% towards white
        out[run] = tuple(c + (1 - c) * mix for c in hue[arm])
    return out


def training_figure(
    runs: Mapping[str, list[dict]], arms: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None
):
    """The training-curves figure, or None: one panel per non-constant loss term / label-free metric,
    x = step, one hue per arm (``arms``: run -> arm; default: each run its own arm), shades per seed."""
    cols = curve_columns(runs)
    if not cols:
        return None
    arms = dict(arms or {}) or {name: name for name in runs}
    arms = {name: arms.get(name, name) for name in runs}
    labels = {name: (labels or {}).get(name, name) for name in runs}
    colours = run_colours(arms)
    ncol = min(3, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow + 0.6), squeeze=False)
    for ax, col in zip(axes.flat, cols):
        for name, rows in runs.items():
            pts = [
                (_num(r.get("step")) if _num(r.get("step")) is not None else _num(r.get("epoch")), _num(r.get(col)))
                for r in rows
            ]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=labels[name], color=colours[name])
        ax.set_title(col, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(y_label(col), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[n], marker="o", ms=3, label=labels[n]) for n in runs]
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=min(3, len(handles)))
    fig.suptitle("Training: loss terms and label-free metrics (colour: arm; shade: seed)", x=0.02, ha="left")
    return fig


def plot_training_curves(
    runs: Mapping[str, list[dict]],
    path: str | Path,
    arms: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path | None:
    """Save :func:`training_figure` to ``path`` (None when there is nothing to plot)."""
    fig = training_figure(runs, arms, labels)
    return None if fig is None else _save(fig, path)


def accuracy_differences(arms: Sequence[str], metrics: Sequence[str], rows: Sequence[dict]) -> list[dict]:
    """What :func:`accuracy_figure` plots: for each metric and each arm after the first, the
    difference to the first arm and its 95% interval in percentage points (low/high None: n=1, or the
    same difference with every seed)."""
    out = []
    for m in metrics:
        for arm in list(arms)[1:]:
            r = next((r for r in rows if r["arm"] == arm and r["metric"] == m), None)
            if r is None or r.get("diff") is None:
                continue
            lo, hi = r.get("diff_low"), r.get("diff_high")
            out.append(
                {
                    "metric": m,
                    "arm": arm,
                    "diff": 100 * r["diff"],
                    "low": None if lo is None else 100 * lo,
                    "high": None if hi is None else 100 * hi,
                    "kind": r.get("diff_kind"),
                }
            )
    return out


def accuracy_figure(arms: Sequence[str], metrics: Sequence[str], rows: Sequence[dict]):
    """Each arm's accuracy minus the first arm's, in points, with its 95% t-interval (a dot without
    bars where n=1) and a zero line; one row per metric, arms offset within it. None: no difference."""
    data = accuracy_differences(arms, metrics, rows)
    if not data:
        return None
    metrics = [m for m in metrics if any(d["metric"] == m for d in data)]
    others = [a for a in list(arms)[1:] if any(d["arm"] == a for d in data)]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(6.5, 1.0 + 0.45 * len(metrics) * max(1, len(others))))
    step = 0.7 / max(len(others), 1)
    for i, arm in enumerate(others):
        colour = palette[(i + 1) % len(palette)]  # arm i+1's hue, as in the training curves
        pts = [(metrics.index(d["metric"]) + (i - (len(others) - 1) / 2) * step, d) for d in data if d["arm"] == arm]
        with_ci = [(y, d) for y, d in pts if d["low"] is not None]
        if with_ci:
            ys, ds = zip(*with_ci)
            ax.errorbar(
                [d["diff"] for d in ds],
                ys,
                xerr=[[d["diff"] - d["low"] for d in ds], [d["high"] - d["diff"] for d in ds]],
                fmt="o",
                color=colour,
                capsize=4,
                label=f"{arm} − {arms[0]} (95% CI)",
            )
        no_ci = [(y, d) for y, d in pts if d["low"] is None]
        if no_ci:
            ax.plot(
                [d["diff"] for _, d in no_ci],
                [y for y, _ in no_ci],
                "o",
                mfc="none",
                color=colour,
                label=f"{arm} − {arms[0]} (no interval: n=1 or no spread)",
            )
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(range(len(metrics)), metrics, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference to {arms[0]} (accuracy points)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Accuracy: difference to the first arm (interval right of 0: higher)", fontsize=10)
    return fig


def plot_accuracy(arms: Sequence[str], metrics: Sequence[str], rows: Sequence[dict], path: str | Path) -> Path | None:
    """Save :func:`accuracy_figure` to ``path`` (None when no arm has a difference to plot)."""
    fig = accuracy_figure(arms, metrics, rows)
    return None if fig is None else _save(fig, path)


def decomposition_figure(arms: Sequence[str], rows: Sequence[dict]):
    """The ``decompose`` protocol's components as one stacked bar per arm (the arm's mean, in %;
    negative parts below zero) and each arm's test error, their sum, as a black tick; None when
    the comparison has no decomposition."""
    from e2mc.evaluation.decompose import COMPONENTS  # torch: only when a report is drawn

    mean = {(r["arm"], r["metric"]): r["mean"] for r in rows}
    comps = [c for c in COMPONENTS if any((a, f"decompose/{c}") in mean for a in arms)]
    if not comps:
        return None
    fig, ax = plt.subplots(figsize=(3.0 + 1.1 * len(arms), 3.9))
    x = np.arange(len(arms))
    up, down = np.zeros(len(arms)), np.zeros(len(arms))
    for c in comps:
        v = np.array([100 * (mean.get((a, f"decompose/{c}")) or 0.0) for a in arms])
        ax.bar(x, v, 0.6, bottom=np.where(v >= 0, up, down), label=c.replace("_", " "))
        up, down = up + np.clip(v, 0, None), down + np.clip(v, None, 0)
    total = [100 * mean.get((a, "decompose/test_error"), math.nan) for a in arms]
    ax.scatter(x, total, color="black", marker="_", s=500, linewidths=2, zorder=3, label="test error (the sum)")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks(x, arms)
    ax.set_ylabel("% of test images")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Where the linear probe's test error comes from")
    return fig


def plot_decomposition(arms: Sequence[str], rows: Sequence[dict], path: str | Path) -> Path | None:
    """Save :func:`decomposition_figure` to ``path`` (None without a decomposition)."""
    fig = decomposition_figure(arms, rows)
    return None if fig is None else _save(fig, path)


def layer_curves(arms: Sequence[str], rows: Sequence[dict]) -> dict[str, dict]:
    """What :func:`layer_figure` draws: per protocol with per-layer rows, its metric (kNN: top1_k20
    when present, else the protocol's first), the layers in order and per arm the (mean, std) per
    layer (None where the arm lacks the layer)."""
    from e2mc.evaluation.layertable import PERCENT, layered

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    by = {(r["arm"], r["metric"]): r for r in rows}
    out = {}
    for proto, (keys, layers) in layered(metrics).items():
        key = "top1_k20" if "top1_k20" in keys else keys[0]
        k = 100.0 if proto in PERCENT else 1.0
        series = {}
        for a in arms:
            rs = [by.get((a, f"{proto}/{key}@{layer}")) for layer in layers]
            series[a] = [None if r is None else (k * r["mean"], k * (r["std"] or 0.0)) for r in rs]
        out[proto] = {"metric": key, "layers": layers, "series": series, "percent": k == 100.0}
    return out


def layer_figure(arms: Sequence[str], rows: Sequence[dict]):
    """One curve per protocol: its metric against the layer, one line per arm (before and after a
    continuation), error bars = std over the arm's checkpoints; None without per-layer results."""
    curves = layer_curves(arms, rows)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (proto, c) in zip(axes[0], curves.items()):
        x = np.arange(len(c["layers"]))
        for a, pts in c["series"].items():
            keep = [(i, p) for i, p in zip(x, pts) if p is not None]
            if keep:
                xs, ps = zip(*keep)
                ax.errorbar(xs, [p[0] for p in ps], yerr=[p[1] for p in ps], marker="o", capsize=3, label=a)
        ax.set_xticks(x, c["layers"], rotation=45 if len(x) > 6 else 0, fontsize=8)
        ax.set_xlabel("layer")
        ax.set_ylabel(c["metric"] + (" (%)" if c["percent"] else ""))
        ax.set_title(proto, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_layers(arms: Sequence[str], rows: Sequence[dict], path: str | Path) -> Path | None:
    """Save :func:`layer_figure` to ``path`` (None without per-layer results)."""
    fig = layer_figure(arms, rows)
    return None if fig is None else _save(fig, path)


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
