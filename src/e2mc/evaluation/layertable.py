"""Per-layer results as tables: one per protocol, a row per layer.

Per-layer metrics are named ``<protocol>/<metric>@<layer>`` (:func:`e2mc.evaluation.compare.
metric_values` flattens ``{"by_layer": {layer: result}}`` that way), so ``compare`` pairs them by
training seed per layer like any other metric; these functions only lay them out.
"""

from __future__ import annotations

from typing import Sequence

from e2mc.evaluation.stats import decimals_for, fmt_difference, fmt_estimate, fmt_number

SEP = "@"


def split(metric: str) -> tuple[str, str, str | None]:
    """``"knn/top1_k20@layer2"`` -> ("knn", "top1_k20", "layer2"); no layer -> (..., None)."""
    name, _, layer = metric.partition(SEP)
    proto, _, key = name.partition("/")
    return proto, key, layer or None


def layered(metrics: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
    """``{protocol: ([metric keys], [layers])}`` of the per-layer metrics, in first-seen order."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for m in metrics:
        proto, key, layer = split(m)
        if layer is None:
            continue
        keys, layers = out.setdefault(proto, ([], []))
        if key not in keys:
            keys.append(key)
        if layer not in layers:
            layers.append(layer)
    return out


PERCENT = ("knn", "linear", "linear_finetune", "fewshot", "semisup", "decompose")  # accuracies, errors


def _is_pct(proto: str) -> bool:
    return proto in PERCENT


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def evaluate_tables(values: dict[str, list[float]]) -> str:
    """One ``evaluate`` result's per-layer protocols (``compare.metric_values(result)``): a
    Markdown table each (accuracies in %)."""
    blocks = []
    for proto, (keys, layers) in layered(list(values)).items():
        pct = _is_pct(proto)
        title = f"[{proto}] per layer" + (" (%)" if pct else "")
        lines = [title, "", _row(["layer", *keys]), "|---" * (1 + len(keys)) + "|"]
        for layer in layers:
            cells = [layer]
            for k in keys:
                xs = values.get(f"{proto}/{k}{SEP}{layer}")
                mean = None if not xs else sum(xs) / len(xs)
                v = None if mean is None else (100 * mean if pct else mean)
                cells.append("" if v is None else fmt_number(v, 2 if pct else decimals_for(v)))
            lines.append(_row(cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def compare_tables(comparison, metrics: Sequence[str]) -> str:
    """A comparison's per-layer metrics: per protocol one table, a row per layer, per metric one
    column per arm (mean ± std (n)) and one per later arm with its difference to the first."""
    names, ref = comparison.names, comparison.names[0]
    blocks = []
    for proto, (keys, layers) in layered(metrics).items():
        pct = _is_pct(proto)
        head = ["layer"]
        for k in keys:
            head += [f"{k} {a}" for a in names] + [f"{k} {a} − {ref}" for a in names[1:]]
        lines = [f"**{proto} per layer**" + (" (%)" if pct else ""), "", _row(head), "|---" * len(head) + "|"]
        for layer in layers:
            cells = [layer]
            for k in keys:
                m = f"{proto}/{k}{SEP}{layer}"
                rows = [comparison.row(a, m) for a in names]
                cells += ["" if r is None else fmt_estimate(r["mean"], r["std"], r["n"], percent=pct) for r in rows]
                for r in rows[1:]:
                    if r is None or r["diff"] is None:
                        cells.append("")
                        continue
                    base = rows[0]["mean"] if rows[0] else None
                    text = fmt_difference(r["diff"], r["diff_low"], r["diff_high"], percent=pct, ref=base)
                    cells.append(text + (" (n=1)" if r["diff_low"] is None else f" ({r['diff_kind']})"))
            lines.append(_row(cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")
