"""Scoring probes without the test split: the held-out part of the TRAINING data, label-free metrics.

``holdout_split`` writes a split file (``e2mc.data.splits``) of the dataset's ``train`` split only:
``"test"`` = a seeded, stratified held-out part, ``"train"`` = the rest (or a stratified subset of
it) on which the probes train and which is the kNN bank / linear-probe data. The dataset's test
split is never read while tuning. ``probe_metrics`` flattens one ``evaluate`` result of a probe
into the numbers the tune ranks by; ``SELECT_RULES`` turns them into a selection score (higher is
better); ``kendall`` compares label-free rankings with the held-out kNN ranking.
"""

from __future__ import annotations

import math
from pathlib import Path

from e2mc.errors import ConfigError, DataError
from e2mc.evaluation import protocols
from e2mc.fileio import atomic_write_json

HELDOUT_KEY = "knn_top1_k20"
K = 20
OUTCOMES = "knn_outcomes"  # the tune's per-image kNN@K protocol (``tuning.outcomes``)
# the tune's linear probe: the ``linear`` protocol's result plus its per-image outcomes (``tuning.outcomes``)
LINEAR_OUTCOMES = "linear_outcomes"


def _alpha_score(m: dict) -> float:
    # alpha-ReQ: Agrawal et al. find downstream accuracy best near alpha = 1 (slower decay: noise;
    # faster: collapse), so the score is -|alpha - 1|
    a = m.get("alpha_req")
    return None if a is None else -abs(a - 1.0)


SELECT_RULES = {
    "heldout": lambda m: m.get(HELDOUT_KEY),
    "rankme": lambda m: m.get("rankme"),
    "entropy": lambda m: m.get("entropy"),
    "lidar": lambda m: m.get("lidar"),
    "alpha_req": _alpha_score,
}
# the label-free protocols (evaluation's one list) that give a selection score
LABEL_FREE = tuple(p for p in protocols.LABEL_FREE if p in SELECT_RULES)


def parse_select(select: str) -> str:
    """``"heldout"`` or ``"label-free:<metric>"`` -> the rule name; ConfigError otherwise."""
    s = str(select).strip()
    if s == "heldout":
        return s
    if s.startswith("label-free:") and s.split(":", 1)[1] in LABEL_FREE:
        return s.split(":", 1)[1]
    raise ConfigError(
        f"--select {select!r} is not valid; use heldout or label-free:<metric> with metric one of "
        f"{', '.join(LABEL_FREE)}"
    )


def score(metrics: dict, rule: str) -> float | None:
    """The selection score of a probe's metrics under ``rule`` (higher is better)."""
    v = SELECT_RULES[rule](metrics)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def has_labels(targets) -> bool:
    """True when the targets carry labels (not all -1) of at least two classes."""
    return len({int(t) for t in targets if int(t) >= 0}) >= 2


def holdout_split(
    path: str | Path,
    dataset: str,
    targets,
    n_holdout: int,
    seed: int = 0,
    n_train: int | None = None,
    k: int = K,
    need_labels: bool = True,
) -> Path:
    """Write (or keep, when it holds the same request) the tune's split file of the TRAIN split.

    ``targets``: labels of ``dataset``'s train split. Raises DataError (one line) when the held-out
    part or the probes' part is too small for kNN@``k``, or when labels are needed but absent.
    """
    import json

    from e2mc.data.splits import read_split_file, write_split_file

    n = len(targets)
    if need_labels and not has_labels(targets):
        raise DataError(
            f"{dataset} has no labels, so --select heldout cannot score probes; choose a label-free "
            f"rule: --select label-free:<metric> ({', '.join(LABEL_FREE)})"
        )
    check_holdout(n, n_holdout, n_train, k)
    path = Path(path)
    request = {
        "dataset": str(dataset),
        "n_source": n,
        "seed": int(seed),
        "n_holdout": int(n_holdout),
        "n_train": None if n_train is None else int(n_train),
    }
    if path.is_file():
        old = read_split_file(path)
        if old.get("request") == request:
            return path
        raise ConfigError(
            f"{path} holds another held-out split ({old.get('request')}); use the same --holdout/"
            "--train-images/--seed, or another --out"
        )
    write_split_file(path, str(dataset), targets, int(n_holdout), int(seed), "train", n_keep=n_train)
    obj = json.loads(path.read_text())
    obj["request"] = request
    atomic_write_json(path, obj, indent=None)
    return path


def check_holdout(n: int, n_holdout: int, n_train: int | None = None, k: int = K) -> None:
    """DataError (one line) when a held-out part of ``n_holdout`` of ``n`` train images, or the
    probes' part left, is too small for kNN@``k``."""
    if n_holdout < k or n_holdout >= n:
        raise DataError(
            f"the held-out part has {n_holdout} images, too few for kNN@{k} scoring (or not fewer than "
            f"the {n} training images); give --holdout between {k} and {n - k}"
        )
    rest = n - n_holdout if n_train is None else min(int(n_train), n - n_holdout)
    if rest < k:
        raise DataError(
            f"the probes' training part has {rest} images, fewer than k={k} for the kNN bank; lower "
            f"--holdout or raise --train-images (the train split has {n})"
        )


def eval_protocols(labels: bool, label_free=LABEL_FREE) -> tuple[str, ...]:
    """The ``evaluate`` protocols a probe is scored with (with labels: kNN and the linear probe, each
    with its per-image outcomes; the linear probe is fitted once, by ``linear_outcomes``)."""
    return (("knn", LINEAR_OUTCOMES, OUTCOMES) if labels else ()) + tuple(label_free)


def same_eval(old: dict | None, new: dict) -> bool:
    """True when a probe scored with ``old`` settings may keep its scores under ``new``: equal, or
    equal once an older tune's ``linear`` (no per-image outcomes) is read as ``linear_outcomes``."""
    if old is None or old == new:
        return True
    renamed = [LINEAR_OUTCOMES if p == "linear" else p for p in old.get("protocols", [])]
    return {**old, "protocols": renamed} == new


def probe_outcomes(res: dict, protocol: str = OUTCOMES) -> str | None:
    """The per-image held-out outcomes (``"0101..."``) of an ``evaluate`` result, if scored: kNN@20's,
    or with ``protocol=LINEAR_OUTCOMES`` the linear probe's."""
    return res[protocol]["correct"] if protocol in res else None


def probe_metrics(res: dict) -> dict:
    """Flatten an ``evaluate`` result into the tune's metric names (backbone features, except the
    E2MC entropy, which is measured on the projector output, E2MC's input)."""
    out = {}
    if "knn" in res:
        out[HELDOUT_KEY] = float(res["knn"][f"top1_k{K}"])
    linear = res.get(LINEAR_OUTCOMES) or res.get("linear")
    if linear is not None:
        out["linear_top1"] = float(linear["top1"])
    if "rankme" in res:
        out["rankme"] = float(res["rankme"]["backbone"])
    if "entropy" in res:
        out["entropy"] = float(res["entropy"]["entropy"])
    if "lidar" in res:
        out["lidar"] = float(res["lidar"]["backbone"])
    if "alpha_req" in res:
        out["alpha_req"] = float(res["alpha_req"]["backbone"])
    return out


def kendall(values: dict[str, dict], reference: str = HELDOUT_KEY, rules=LABEL_FREE) -> dict:
    """``{rule: {"tau", "p", "n"}}``: Kendall tau (scipy) between each label-free selection score and
    ``reference`` across the probes in ``values`` (label -> metrics); rules with < 3 probes: tau None.
    ``too_few``: even a perfect ranking of n probes could not reach p < 0.05 (exact two-sided p >= 2 / n!:
    n < 5), so the tau says nothing and the report shows "too few probes"."""
    from scipy.stats import kendalltau

    out = {}
    for rule in rules:
        pairs = [(score(m, rule), m.get(reference)) for m in values.values()]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if len(pairs) < 3:
            out[rule] = {"tau": None, "p": None, "n": len(pairs), "too_few": True}
            continue
        res = kendalltau([a for a, _ in pairs], [b for _, b in pairs])
        tau, p = float(res.statistic), float(res.pvalue)
        out[rule] = {
            "tau": None if math.isnan(tau) else tau,
            "p": None if math.isnan(p) else p,
            "n": len(pairs),
            "too_few": 2 / math.factorial(len(pairs)) >= 0.05,
        }
    return out


def select_best(
    summary: dict, arm_of: dict[str, str], arm: str = "e2mc", criterion: str = "knn/top1_k20"
) -> dict | None:
    """The label of ``arm`` with the highest mean ``criterion`` (ties: first label), with its row.

    ``summary``: label -> metric -> ``{"mean", ...}`` (the benchmark harness's table rows).
    """
    cands = [
        (summary[lab][criterion]["mean"], lab)
        for lab in summary
        if arm_of.get(lab) == arm and criterion in summary[lab]
    ]
    if not cands:
        return None
    best = max(cands, key=lambda c: c[0])[1]
    return {
        "label": best,
        "criterion": criterion,
        "row": summary[best][criterion],
        "ranking": [lab for _, lab in sorted(cands, key=lambda c: -c[0])],
    }
