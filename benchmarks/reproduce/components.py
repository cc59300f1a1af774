"""What each loss term did during continuation: first logged step vs the last epoch, per run.

Reads ``OUT/runs/*/metrics.csv`` (written by e2mc's trainer) of an ``arms.py`` results folder and
writes ``OUT/components.md`` / ``OUT/components.json``: for every run label, the mean over seeds of
each loss component at the first logged training step and averaged over the last epoch's logged
steps. This is the mechanism behind the accuracy table (does the E2MC covariance term bind? what
does the entropy term do to VICReg's invariance / covariance terms, or to DINO's teacher entropy?).

    python -m benchmarks.reproduce.components benchmarks/results/cifar10_vicreg --runs /work/e2mc-runs/arms
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from benchmarks.reproduce.common import read_json, write_json

COLUMNS = (
    "base.invariance",
    "base.variance",
    "base.covariance",
    "base.teacher_entropy",
    "base.koleo",
    "addon",
    "addon.entropy",
    "addon.covariance",
    "addon.nuclear_norm",
)


def read_components(metrics_csv: str | Path, columns=COLUMNS) -> dict[str, dict[str, float]]:
    """``{column: {"first": x, "last_epoch": y}}`` for the columns present in a run's metrics.csv.

    ``first`` is the first logged training row; ``last_epoch`` the mean over the training rows of
    the last epoch that has any. Columns that are empty throughout are left out.
    """
    from e2mc.train.run import read_metrics

    rows = [r for r in read_metrics(metrics_csv) if r.get("phase") == "train"]
    if not rows:
        return {}
    last_ep = rows[-1]["epoch"]
    last = [r for r in rows if r["epoch"] == last_ep]
    out = {}
    for col in columns:
        first = rows[0].get(col)
        vals = [float(r[col]) for r in last if r.get(col) not in (None, "")]
        if first in (None, "") or not vals:
            continue
        out[col] = {"first": float(first), "last_epoch": sum(vals) / len(vals)}
    return out


def collect(runs_root: str | Path) -> dict[str, dict]:
    """Per label (seeds averaged): ``{label: {"seeds": [...], "components": {col: {first, last_epoch}}}}``."""
    by_label: dict[str, list[tuple[int, dict]]] = {}
    for marker in sorted(Path(runs_root).glob("runs/*/harness.json")):
        st = read_json(marker)
        csv_path = marker.parent / "metrics.csv"
        if not st.get("done") or not csv_path.is_file():
            continue
        by_label.setdefault(st["label"], []).append((st["seed"], read_components(csv_path)))
    out = {}
    for label, items in by_label.items():
        cols = sorted({c for _, comp in items for c in comp}, key=lambda c: COLUMNS.index(c))
        agg = {}
        for c in cols:
            have = [comp[c] for _, comp in items if c in comp]
            agg[c] = {k: sum(h[k] for h in have) / len(have) for k in ("first", "last_epoch")}
        out[label] = {"seeds": sorted(s for s, _ in items), "components": agg}
    return out


def _fmt(x: float) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.4g}"


def to_markdown(table: dict[str, dict], title: str) -> str:
    cols = [c for c in COLUMNS if any(c in t["components"] for t in table.values())]  # the method's terms
    lines = [
        f"# {title}",
        "",
        "Loss components at the first logged step -> mean over the last epoch's logged steps (mean over seeds). "
        "`base.*` are the base loss's terms: VICReg's before their weights (25, 25, 1), DINO's "
        "`teacher_entropy` (the centred, sharpened teacher output's entropy, nats; ln K when uniform); "
        "`addon` is the weighted add-on loss; `addon.entropy` the mean marginal entropy (nats, maximised), "
        "`addon.covariance` E2MC's (or VC's) off-diagonal covariance term before its weight.",
        "",
        "| run | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for label in sorted(table):
        comp = table[label]["components"]
        cells = [f"{_fmt(comp[c]['first'])} -> {_fmt(comp[c]['last_epoch'])}" if c in comp else "" for c in cols]
        lines.append(f"| {label} | {','.join(map(str, table[label]['seeds']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder to write components.md / components.json into")
    ap.add_argument("--runs", default=None, help="arms.py --out folder holding runs/ (default: OUT)")
    ap.add_argument("--title", default="Loss components during continuation")
    args = ap.parse_args(argv)
    table = collect(args.runs or args.out)
    write_json(Path(args.out) / "components.json", table)
    md = to_markdown(table, args.title)
    (Path(args.out) / "components.md").write_text(md)
    print(md)
    return table


if __name__ == "__main__":
    main()
