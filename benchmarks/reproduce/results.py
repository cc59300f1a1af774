"""Tables and JSON of the arms: mean, std, n per arm and the difference to base-only.

Differences follow ``e2mc.evaluation.stats.difference``, the rule of ``e2mc compare`` and the demo:
paired by training seed when both arms have the same set of seeds (at least two), Welch when
both have two or more values otherwise, else the bare difference of means (n=1: no interval).
"""

from __future__ import annotations

from e2mc.evaluation.compare import metric_values
from e2mc.evaluation.stats import difference as stats_difference
from e2mc.evaluation.stats import summarize
from e2mc.tuning.scoring import select_best  # noqa: F401 - the selection rule lives in the package (e2mc tune)

TABLE_METRICS = (
    "knn/top1_k20",
    "knn/top1_k200",
    "linear/top1",
    "rankme/backbone",
    "rankme/projector",
    # the risk decomposition (``--protocols decompose``): the probe's test error and its parts, in %
    "decompose/test_error",
    "decompose/usability",
    "decompose/probe_generalisation",
    "decompose/encoder_generalisation",
)
START = "start"
_ACCURACY = ("knn/", "linear/", "linear_finetune/", "fewshot/", "semisup/", "decompose/")  # in % (errors too)


def _is_accuracy(metric: str) -> bool:
    return metric.startswith(_ACCURACY)


def difference(ref: dict[int, float], arm: dict[int, float]) -> dict:
    """``arm - ref`` where both map training seed -> value (see module docstring)."""
    d = stats_difference(ref, arm)
    return {"mean": d.mean, "low": d.low, "high": d.high, "n": d.n, "kind": d.kind}


def summarise(per_label: dict[str, dict[int, dict]], reference: dict[str, str | None]) -> dict:
    """``{label: {metric: {"mean", "std", "n", "values", "seeds", "diff"}}}``.

    ``per_label[label][seed]`` is one ``evaluate`` result; ``reference[label]`` names the label it
    is compared with (None: no difference).
    """
    values = {
        lab: {seed: {m: sum(v) / len(v) for m, v in metric_values(res).items()} for seed, res in runs.items()}
        for lab, runs in per_label.items()
    }
    out: dict = {}
    for lab, by_seed in values.items():
        mets = list(dict.fromkeys(m for r in by_seed.values() for m in r))
        ref = reference.get(lab)
        rows = {}
        for m in mets:
            seeds = sorted(s for s in by_seed if m in by_seed[s])
            xs = [by_seed[s][m] for s in seeds]
            s = summarize(xs)
            row = {"mean": s.mean, "std": s.std, "n": s.n, "values": xs, "seeds": seeds, "diff": None}
            if ref is not None and ref in values and ref != lab:
                ref_vals = {sd: r[m] for sd, r in values[ref].items() if m in r}
                if ref_vals:
                    row["diff"] = difference(ref_vals, {sd: by_seed[sd][m] for sd in seeds})
            rows[m] = row
        out[lab] = rows
    return out


def fmt_value(m: str, x: float | None, signed: bool = False) -> str:
    """A metric value as the tables print it: accuracies and errors in points (x100, 2 decimals), the rest 4 digits."""
    if x is None:
        return "n/a"
    scale, fmt = (100.0, ".2f") if _is_accuracy(m) else (1.0, ".4g")
    return f"{scale * x:{'+' if signed else ''}{fmt}}"


def to_markdown(summary: dict, metrics=TABLE_METRICS, title: str = "", notes: list[str] = ()) -> str:
    """Two tables: mean ± std (n) per arm, and the difference to the reference with a 95% interval."""
    labels = list(summary)
    mets = [m for m in metrics if any(m in summary[lab] for lab in labels)]
    head = "| arm | " + " | ".join(m + (" (%)" if _is_accuracy(m) else "") for m in mets) + " |"
    sep = "|---|" + "---|" * len(mets)
    lines = [f"# {title}", ""] if title else []
    lines += [
        *notes,
        "",
        "Mean ± std (n training seeds); accuracies and errors (`decompose/*`: lower is better) in %.",
        "",
        head,
        sep,
    ]
    for lab in labels:
        cells = []
        for m in mets:
            r = summary[lab].get(m)
            cells.append(
                ""
                if r is None
                else fmt_value(m, r["mean"])
                + ("" if r["std"] is None else f" ± {fmt_value(m, r['std'])}")
                + f" ({r['n']})"
            )
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Difference to base-only (arm − base), 95% t-interval (`e2mc.evaluation.stats`): paired by training "
        "seed when both arms have the same seeds, Welch otherwise; the last column names the test.",
        "",
        head[:-1] + "| test |",
        sep + "---|",
    ]
    for lab in labels:
        cells = []
        kinds: list[str] = []
        for m in mets:
            d = (summary[lab].get(m) or {}).get("diff")
            if d is None:
                cells.append("")
                continue
            kinds += [d["kind"]] if d["kind"] not in kinds else []
            cells.append(
                fmt_value(m, d["mean"], True)
                + (
                    " (n=1)"
                    if d["low"] is None
                    else f" [{fmt_value(m, d['low'], True)}, {fmt_value(m, d['high'], True)}]"
                )
            )
        if kinds:
            lines.append(f"| {lab} | " + " | ".join(cells) + f" | {'; '.join(kinds)} |")
    return "\n".join(lines) + "\n"
