"""One table across several ``arms.py`` results folders: each label's difference to its base-only
reference next to what its loss terms did (``components.json``, from ``components.py``).

    python -m benchmarks.reproduce.summary benchmarks/results/cifar10_vicreg_why/holdout \
        benchmarks/results/cifar10_vicreg_why/holdout_6_epochs --out benchmarks/results/cifar10_vicreg_why/summary.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.reproduce import results as R
from benchmarks.reproduce.common import read_json

METRICS = ("knn/top1_k20", "knn/top1_k200", "linear/top1")
TERMS = ("base.invariance", "base.covariance", "addon.covariance")


def _diff(metric: str, row: dict | None) -> str:
    d = (row or {}).get("diff")
    if not d:
        return ""
    text = R.fmt_value(metric, d["mean"], signed=True)
    if d.get("low") is not None:
        text += f" [{R.fmt_value(metric, d['low'], signed=True)}, {R.fmt_value(metric, d['high'], signed=True)}]"
    return text


def rows_of(folder: str | Path) -> list[list[str]]:
    """Rows ``[folder, label, seeds, diffs..., rankme, terms...]`` for every non-base label."""
    folder = Path(folder)
    res = read_json(folder / "results.json")
    comp = read_json(folder / "components.json", {})
    out = []
    for label, mets in res["arms"].items():
        ref = res["reference"].get(label)
        if label == "start" or ref is None:
            continue
        seeds = next(iter(mets.values()))["seeds"]
        run_label = label.split("@")[0]
        terms = comp.get(run_label, {}).get("components", {})
        out.append(
            [
                folder.name,
                label,
                ",".join(map(str, seeds)),
                *[_diff(m, mets.get(m)) for m in METRICS],
                f"{mets['rankme/backbone']['mean']:.1f}" if "rankme/backbone" in mets else "",
                *[f"{terms[t]['last_epoch']:.3g}" if t in terms else "" for t in TERMS],
            ]
        )
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    head = [
        "folder",
        "label",
        "seeds",
        *[f"{m} − base (points)" for m in METRICS],
        "RankMe",
        *[f"{t} (run's last epoch)" for t in TERMS],
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for folder in args.folders:
        lines += ["| " + " | ".join(r) + " |" for r in rows_of(folder)]
    md = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(md)
    print(md)
    return md


if __name__ == "__main__":
    main()
