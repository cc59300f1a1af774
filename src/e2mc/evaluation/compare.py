"""Compare several checkpoints ("arms") with the same protocols, dataset and seeds.

Each arm is one checkpoint or several (e.g. continued-training seeds: ``"e2mc=a.pt,b.pt,c.pt"``);
a run folder stands for its ``checkpoints/last.pt``. For every numeric metric the table gives
the arm's mean, std (ddof=1) and n, and the difference to the FIRST arm with a 95% t-interval
(:mod:`e2mc.evaluation.stats`, the same rule as the demo and the benchmarks):

* several checkpoints per arm: one value per checkpoint (averaged over evaluation seeds); paired
  by training seed (``config.train.seed`` of e2mc checkpoints) when both arms have the same set
  of seeds, Welch otherwise — what a paper comparison needs;
* one checkpoint in both arms and a seeded protocol (few-shot, semi-sup): values per evaluation
  seed, paired over them (the same subsets are drawn for every arm). That spread is
  evaluation-seed noise, not training variance, and the table says so;
* one value on either side (deterministic protocols with one checkpoint): no std, no interval.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from e2mc.errors import ConfigError, DataError
from e2mc.evaluation.layertable import SEP, compare_tables
from e2mc.evaluation.stats import (
    difference,
    fmt_difference,
    fmt_estimate,
    paired_difference,
    summarize,
)
from e2mc.fileio import atomic_write_text

_NOT_METRICS = {
    "seed",
    "epochs",
    "weight_decay",
    "val_top1",
    "train_loss",
    "selected_at_grid_edge",
    "iterations",
    "tol",
    "images",
    "views",
}  # LiDAR's surrogate-class counts
_FLAGS = ("linear/converged", "linear/selected_at_grid_edge")  # shown per arm, no difference
EVAL_SEED_NOTE = "spread over evaluation seeds of one checkpoint: evaluation noise, not training variance"
_ACCURACY_PROTOCOLS = ("knn/", "linear/", "linear_finetune/", "fewshot/", "semisup/")


def is_accuracy(metric: str) -> bool:
    return metric.startswith(_ACCURACY_PROTOCOLS)


def parse_arm(spec) -> tuple[str | None, list]:
    """``"name=p1,p2"`` -> ("name", [p1, p2]); ``"p1,p2"`` -> (None, [...]); a list -> (None, list)."""
    if isinstance(spec, (list, tuple)):
        return None, list(spec)
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        name = None
        if "=" in s and not os.path.exists(s):
            name, s = s.split("=", 1)
        return name, [p for p in s.split(",") if p]
    return None, [spec]  # an in-memory model


def resolve_checkpoint(path) -> str:
    """A run folder -> its ``checkpoints/last.pt``; a file, an ``hf:``/``aves:`` name or a
    ``save_pretrained`` audio folder -> itself. Raises DataError if absent."""
    from e2mc.models.checkpoints import resolve_checkpoint_path

    p = str(path)
    from e2mc.models.audio import is_audio_arch, is_hf_folder

    if is_audio_arch(p) or is_hf_folder(p):  # an audio encoder as published (before a continuation)
        return p
    if os.path.isdir(p):  # a folder of runs (the demo's) gets them named
        p = str(resolve_checkpoint_path(p))
    if not os.path.isfile(p):
        raise DataError(f"no checkpoint at {p}; pass a checkpoint file or a run folder with checkpoints/last.pt")
    return p


def training_seed(path) -> int | None:
    """``config.train.seed`` of an e2mc checkpoint file; None when unknown (other formats, models)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    from e2mc.models.checkpoints import read_checkpoint

    try:
        obj, _ = read_checkpoint(path)
    except Exception:  # noqa: BLE001 - an unreadable seed only means "cannot pair"
        return None
    seed = ((obj.get("config") or {}).get("train") or {}).get("seed") if isinstance(obj, dict) else None
    return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None


def flag_values(result: dict) -> dict[str, bool]:
    """Boolean diagnostics shown in the table (linear probe: converged, selected_at_grid_edge)."""
    out = {}
    for name in _FLAGS:
        proto, key = name.split("/")
        v = (result.get(proto) or {}).get(key) if isinstance(result.get(proto), dict) else None
        if isinstance(v, bool):
            out[name] = v
    return out


def metric_values(result: dict) -> dict[str, list[float]]:
    """``{"protocol/metric": [values]}`` from one ``evaluate`` result (per-seed lists where present);
    per-layer results (``{"by_layer": {layer: result}}``) as ``"protocol/metric@layer"``."""
    out = {}
    for proto, res in result.items():
        if proto == "meta" or not isinstance(res, dict):
            continue
        by_layer = res.get("by_layer")
        parts = by_layer.items() if isinstance(by_layer, dict) else [(None, res)]
        for layer, r in parts:
            per_seed = r.get("per_seed", {})
            for k, v in r.items():
                if k in _NOT_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                name = f"{proto}/{k}" + ("" if layer is None else f"{SEP}{layer}")
                out[name] = [float(x) for x in per_seed.get(k, [v])]
    return out


@dataclass
class ComparisonResult:
    """Per-arm evaluation results and the comparison table (``rows``)."""

    names: list[str]
    checkpoints: list[list[str]]
    dataset: str
    protocols: list[str]
    seeds: list[int]
    results: list[list[dict]]
    rows: list[dict] = field(default_factory=list)
    train_seeds: list[list[int | None]] = field(default_factory=list)  # per arm and checkpoint; None: unknown
    headline: dict | None = None  # a verdict set by its maker (the demo); else :func:`headline` computes one
    wall_time_s: dict | None = None  # stage -> seconds (compare: evaluation; the demo: each stage), for the report

    def metrics(self) -> list[str]:
        """Metric names in table order."""
        seen: list[str] = []
        for r in self.rows:
            if r["metric"] not in seen:
                seen.append(r["metric"])
        return seen

    def row(self, arm: str, metric: str) -> dict | None:
        """The table row of one arm and metric, or None."""
        return next((r for r in self.rows if r["arm"] == arm and r["metric"] == metric), None)

    def to_markdown(self, metrics: Sequence[str] | None = None) -> str:
        """Markdown table, one row per metric and one column per arm: mean ± std (n), and for
        every arm after the first its difference to the first with a 95% t-interval and the test
        that made it ("paired, n=3", "Welch, n=3 vs 2", ...).

        Accuracies (kNN, linear, few-shot, semi-supervised) are shown in percent. The linear
        probe's flags (converged, selected_at_grid_edge) get a row each ("yes"/"no", or how many
        checkpoints of the arm have the flag). Per-layer metrics (``--layers``) follow as one table
        per protocol with a row per layer (:func:`e2mc.evaluation.layertable.compare_tables`).
        """
        every = [m for m in self.metrics() if metrics is None or m in metrics]
        mets = [m for m in every if SEP not in m]  # per-layer metrics: one table per protocol below
        ref = self.names[0]
        head = ["metric", *self.names] + [f"{a} − {ref}" for a in self.names[1:]]
        intro = counts_note(self) + (
            f" Differences to `{ref}` with a 95% t-interval, paired by training seed when "
            "both arms have the same seeds, Welch otherwise. Accuracies and the decomposition's errors in %."
        )
        if any(r.get("spread") == "evaluation seeds" and r["metric"] in mets for r in self.rows):
            intro += f" Rows marked † have one checkpoint per arm: n counts evaluation seeds ({EVAL_SEED_NOTE})."
        lines = [intro, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in mets:
            pct = is_accuracy(m) or m.startswith("decompose/")  # errors (lower is better), in % too
            eval_spread = any(r.get("spread") == "evaluation seeds" for r in self.rows if r["metric"] == m)
            cells = [m + (" (%)" if pct else "") + (" †" if eval_spread else "")]
            for a in self.names:
                r = self.row(a, m)
                cells.append("" if r is None else fmt_estimate(r["mean"], r["std"], r["n"], percent=pct))
            ref_row = self.row(ref, m)
            for a in self.names[1:]:
                r = self.row(a, m)
                if r is None or r["diff"] is None:
                    cells.append("")
                    continue
                text = fmt_difference(
                    r["diff"], r["diff_low"], r["diff_high"], percent=pct, ref=ref_row["mean"] if ref_row else None
                )
                if r["diff_low"] is None and "the same difference" in (r["diff_kind"] or ""):
                    cells.append(text + f" ({r['diff_kind']}; no interval)")  # no spread: no interval
                elif r["diff_low"] is None:
                    cells.append(text + " (n=1, no interval)")
                else:
                    cells.append(text + f" ({r['diff_kind']})")
            lines.append("| " + " | ".join(cells) + " |")
        for flag in _FLAGS:
            per_arm = [[f[flag] for f in (flag_values(res) for res in arm) if flag in f] for arm in self.results]
            if any(per_arm) and (metrics is None or any(m.startswith(flag.split("/")[0] + "/") for m in mets)):
                cells = (
                    [flag]
                    + [
                        ("yes" if v[0] else "no") if len(v) == 1 else (f"{sum(v)}/{len(v)} yes" if v else "")
                        for v in per_arm
                    ]
                    + [""] * (len(self.names) - 1)
                )
                lines.append("| " + " | ".join(cells) + " |")
        per_layer = compare_tables(self, every)
        if per_layer and not mets:
            return intro + "\n\n" + per_layer
        return "\n".join(lines) + "\n" + ("\n" + per_layer if per_layer else "")

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """JSON text of everything (written to ``path`` too when given)."""
        text = json.dumps(asdict(self), indent=2, default=float)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str) -> "ComparisonResult":
        """Read what :meth:`to_json` wrote (JSON text or a file path)."""
        text = open(text_or_path).read() if os.path.exists(str(text_or_path)) else text_or_path
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(
                f"not a comparison JSON written by `e2mc compare` ({exc}); pass the comparison.json "
                "that `e2mc compare --out DIR` wrote"
            ) from exc


def counts_note(comparison: "ComparisonResult") -> str:
    """What the counts of a comparison mean: n per cell, training seeds, and which protocols used
    which evaluation seeds (one sentence each; the table's intro and the report's "how to read")."""
    from e2mc.evaluation.api import seeds_used

    used = seeds_used(comparison.protocols, comparison.seeds)
    every = [p for p, s in used.items() if len(s) > 1]
    first = [p for p, s in used.items() if len(s) == 1]
    fixed = [p for p, s in used.items() if not s]
    parts = []
    if every:
        parts.append(f"{', '.join(every)}: one draw per evaluation seed {comparison.seeds}, averaged")
    if first:
        parts.append(f"{', '.join(first)}: evaluation seed {comparison.seeds[0]} only")
    if fixed:
        parts.append(f"{', '.join(fixed)}: deterministic, no seed")
    seeds = sorted({s for arm in comparison.train_seeds for s in arm if s is not None})
    trained = f" (training seeds {seeds})" if seeds else ""
    return (
        f"Dataset `{comparison.dataset}`. Cells: mean ± std (n), n = checkpoints of the arm{trained}, "
        f"one value each. Evaluation seeds: {'; '.join(parts)}."
    )


HEADLINE_METRIC = "knn/top1_k20"


def headline(
    comparison: "ComparisonResult",
    arm: str | None = None,
    metric: str | None = None,
    *,
    subject: str | None = None,
    ref_label: str | None = None,
) -> dict | None:
    """The comparison's verdict: ``arm`` (default: the second arm) minus the first arm on ``metric``
    (default kNN@20, per layer the last layer's, else the first accuracy (per layer: its last layer's),
    else the first metric), the table's own difference and
    95% interval, a verdict and the one-line ``text`` that the terminal and the report print.
    None when there is no second arm or no difference for that metric."""
    if len(comparison.names) < 2:
        return None
    ref, arm = comparison.names[0], arm or comparison.names[1]
    mets = comparison.metrics()
    deepest = [m for m in mets if m.startswith(HEADLINE_METRIC + SEP)][-1:]  # per layer: the last layer's
    first = next((m for m in mets if is_accuracy(m)), mets[0] if mets else None)
    if first and SEP in first:  # per layer (kNN@20 absent, e.g. k clipped on a small set): that metric's last layer
        first = [m for m in mets if m.split(SEP)[0] == first.split(SEP)[0]][-1]
    metric = metric or (HEADLINE_METRIC if HEADLINE_METRIC in mets else deepest[0] if deepest else first)
    base, row = comparison.row(ref, metric), comparison.row(arm, metric)
    if base is None or row is None or row["diff"] is None:
        return None
    subject = subject or f"`{arm}`"
    better = "helps" if is_accuracy(metric) else "is higher"
    worse = "hurts" if is_accuracy(metric) else "is lower"
    if row["diff_low"] is None and "the same difference" in (row.get("diff_kind") or ""):
        verdict = "the same difference with every seed: no spread, no interval, no verdict (run more seeds or a larger test set)"
    elif row["diff_low"] is None:
        verdict = "only one seed: no interval, no verdict (run with more seeds)"
    elif row["diff_low"] > 0:
        verdict = f"{subject} {better}: the 95% interval of the difference is above zero"
    elif row["diff_high"] < 0:
        verdict = f"{subject} {worse}: the 95% interval of the difference is below zero"
    else:
        verdict = "no clear difference: the 95% interval of the difference contains zero"
    pct = is_accuracy(metric)
    diff = fmt_difference(row["diff"], percent=pct, ref=base["mean"])
    ends = [
        fmt_difference(v, percent=pct, ref=base["mean"]) if v is not None else "n/a"
        for v in (row["diff_low"], row["diff_high"])
    ]
    text = (
        f"Headline ({metric}, {row['diff_kind']}): {subject} − {ref_label or f'`{ref}`'} = {diff}"
        f"{' points' if pct else ''}, 95% CI [{ends[0]}, {ends[1]}]: {verdict}."
    )
    return {
        "metric": metric,
        "arm": arm,
        "ref": ref,
        "difference": row["diff"],
        "low": row["diff_low"],
        "high": row["diff_high"],
        "kind": row["diff_kind"],
        "n": row["n"],
        "verdict": verdict,
        "text": text,
    }


def build_rows(
    names: Sequence[str], results: Sequence[Sequence[dict]], train_seeds: Sequence[Sequence[int | None]] | None = None
) -> list[dict]:
    """Summaries per arm and metric, with differences to the first arm (see module docstring).

    ``train_seeds[i][j]``: training seed of arm i's checkpoint j (None: unknown, no pairing).
    """
    seeds_of = [list(s) for s in train_seeds] if train_seeds else [[None] * len(r) for r in results]
    per_arm = []
    for arm_results, seeds in zip(results, seeds_of):
        vals = [metric_values(r) for r in arm_results]
        mets = {m for v in vals for m in v}
        if len(vals) == 1:  # one checkpoint: the values are per evaluation seed
            per_arm.append({m: (vals[0][m], [seeds[0]], True) for m in mets})
        else:
            per_arm.append(
                {
                    m: (
                        [sum(v[m]) / len(v[m]) for v in vals if m in v],
                        [s for v, s in zip(vals, seeds) if m in v],
                        False,
                    )
                    for m in mets
                }
            )
    order = list(dict.fromkeys(m for r in results[0] for m in metric_values(r)))
    rows = []
    for name, arm in zip(names, per_arm):
        for m in order + sorted(set(arm) - set(order)):
            if m not in arm:
                continue
            xs, seeds, single = arm[m]
            s = summarize(xs)
            spread = None if s.n < 2 else ("evaluation seeds" if single else "checkpoints")
            row = {
                "arm": name,
                "metric": m,
                "mean": s.mean,
                "std": s.std,
                "n": s.n,
                "low": s.low,
                "high": s.high,
                "values": xs,
                "train_seeds": seeds,
                "spread": spread,
                "diff": None,
                "diff_low": None,
                "diff_high": None,
                "diff_kind": None,
            }
            ref = per_arm[0].get(m)
            if name != names[0] and ref is not None:
                ref_xs, ref_seeds, ref_single = ref
                if single and ref_single and len(xs) == len(ref_xs) > 1:
                    d = paired_difference(ref_xs, xs)
                    kind = f"paired over evaluation seeds, n={d.n}" + (
                        ", the same difference with every seed" if d.low is None else ""
                    )
                else:
                    # a single checkpoint against several: its evaluation seeds are no training seeds
                    a_xs = [s.mean] if single else xs
                    r_xs = [sum(ref_xs) / len(ref_xs)] if ref_single else ref_xs
                    d = difference(r_xs, a_xs, None if ref_single else ref_seeds, None if single else seeds)
                    kind = d.kind
                row.update(diff=d.mean, diff_low=d.low, diff_high=d.high, diff_kind=kind)
            rows.append(row)
    return rows


def compare(
    checkpoints: Sequence,
    names: Sequence[str] | None = None,
    dataset=None,
    *,
    protocols: Sequence[str] = ("knn", "linear", "fewshot", "rankme"),
    settings=None,
    **deprecated,
) -> ComparisonResult:
    """Evaluate every arm with the same protocols/settings/dataset and build the comparison table.

    ``checkpoints``: one entry per arm: a checkpoint file, a run folder, ``"name=p1,p2,..."``, a
    list of paths, or an in-memory model. ``dataset``: as :func:`~e2mc.evaluation.api.evaluate`'s
    (None: the runs' own training data, when they share one). ``settings``: an ``EvalSettings`` or ``{"eval.<key>":
    value}`` overrides, as :func:`e2mc.evaluation.api.evaluate` takes them (its former keyword
    arguments, ``seeds=`` etc., still work for one release with a ``DeprecationWarning``).
    """
    import warnings

    from e2mc.evaluation.api import evaluate, evaluation_settings

    if deprecated:
        warnings.warn(
            f"compare({', '.join(f'{k}=' for k in deprecated)}) is deprecated; pass settings=EvalSettings(...)",
            DeprecationWarning,
            stacklevel=2,
        )
    settings = evaluation_settings(settings, **deprecated)
    seeds = settings.seeds
    if not checkpoints:
        raise ConfigError("compare needs at least one checkpoint")
    arms = [parse_arm(c) for c in checkpoints]
    if names is not None and len(names) != len(arms):
        raise ConfigError(f"{len(names)} names for {len(arms)} arms; give one name per arm")
    final_names = (
        list(names)
        if names is not None
        else [
            n or (os.path.basename(os.path.normpath(str(p[0]))) if isinstance(p[0], (str, os.PathLike)) else f"arm{i}")
            for i, (n, p) in enumerate(arms)
        ]
    )
    if len(set(final_names)) != len(final_names):
        final_names = [f"{n}#{i}" for i, n in enumerate(final_names)]
    if dataset is None:  # the runs' own training data, when they share one (else a one-line error)
        from e2mc.evaluation.api import default_dataset

        dataset = default_dataset([p for _, ps in arms for p in ps])
    paths = [[resolve_checkpoint(p) if isinstance(p, (str, os.PathLike)) else p for p in ps] for _, ps in arms]
    t0 = time.perf_counter()
    results = [[evaluate(p, dataset, protocols, settings) for p in ps] for ps in paths]
    train_seeds = [[training_seed(p) for p in ps] for ps in paths]
    for name, seeds_of in zip(final_names, train_seeds):
        twice = sorted({s for s in seeds_of if s is not None and seeds_of.count(s) > 1})
        if twice:
            warnings.warn(
                f"arm {name!r} holds several checkpoints of training seed {', '.join(map(str, twice))}: its n counts "
                "them as independent runs; give one checkpoint per training seed",
                stacklevel=2,
            )
    return ComparisonResult(
        final_names,
        # absolute: `e2mc report` reads the runs' folders from comparison.json, from any directory
        [[os.path.abspath(p) if isinstance(p, (str, os.PathLike)) else type(p).__name__ for p in ps] for ps in paths],
        str(dataset) if isinstance(dataset, (str, os.PathLike)) else "custom",
        list(protocols),
        [int(s) for s in seeds],
        results,
        build_rows(final_names, results, train_seeds),
        train_seeds,
        wall_time_s={"evaluate": round(time.perf_counter() - t0, 1)},
    )
