"""The risk decomposition of a linear probe's test error (Dubois, Hashimoto & Liang, ICML 2023,
"Evaluating Self-Supervised Learning via Risk Decomposition"; YannDubs/SSL-Risk-Decomposition).

Three probe fits on cached features (the streaming probe of :mod:`e2mc.evaluation.streaming`,
memory flat in N), plus one on a supervised reference encoder when given:

* train->train: fit on the whole training split, error on it (``r_A_F`` in the paper's code);
* comp->sub: fit on the training split minus a held-out subset ``sub`` (by default the test set's
  size, at most half the seen images), error on ``sub`` (``r_A_S``); ``sub`` is a seeded
  stratified draw from the images the encoder saw in SSL training;
* train->test: fit on the whole training split, error on the test split (``r_U_S``);

and the four components, which sum to the train->test error exactly (a telescoping sum):

    approximation          = train->train error of the reference encoder (merged into usability without one)
    representation usability = train->train - approximation
    probe generalisation   = comp->sub - train->train
    encoder generalisation = train->test - comp->sub

Each fit's hyper-parameter (the L2 penalty) is selected on training data only, per fit as in the
paper's code (``main_fullshot.py``'s ``components2hypopt``): the train->train fits take the penalty
with the lowest training error (they measure what a linear probe CAN fit, as the paper's code
tunes ``train_train`` on its own training subset); comp->sub takes the penalty with the best
accuracy on a held-out ``val_fraction`` of the complement, train->test on a held-out ``val_fraction``
of the training split (seeded, stratified; heads fit on the rest). The test split and ``sub`` never
influence a choice (the paper's code tunes ``train_test`` on the test split; e2mc does not).
"""

from __future__ import annotations

from typing import Sequence

import torch

from e2mc.errors import DataError
from e2mc.evaluation.knn import check_labelled
from e2mc.evaluation.linear import stratified_split
from e2mc.evaluation.streaming import accuracy_per_head, feature_stats, fit_streaming

COMPONENTS = ("approximation", "usability", "probe_generalisation", "encoder_generalisation")
DEFINITIONS = {
    "approximation": "train->train error of a linear probe on a supervised encoder of the same architecture "
    "(the reference): what the architecture cannot fit linearly",
    "usability": "train->train error of the probe on the SSL features minus approximation: how much less "
    "linearly usable the SSL features are than the supervised ones",
    "probe_generalisation": "comp->sub error (probe fit on the training split minus a held-out subset of the "
    "test set's size, scored on that subset) minus train->train: the probe's own overfitting",
    "encoder_generalisation": "train->test error minus comp->sub: the subset's images were seen in SSL "
    "training, the test images were not; the encoder's overfitting to its training images",
}
MERGED_NOTE = (
    "no supervised reference (--reference): approximation is not measured and is merged into usability "
    "(the paper finds it small for ResNet-50/ViT on ImageNet)"
)


def _fit(x, y, idx, c, wds, *, seed, **kw):
    mean, std = feature_stats(x, idx)
    w, b, info = fit_streaming(x, y, idx, c, wds, mean=mean, std=std, seed=seed, **kw)
    return w, b, mean, std, info


def _errors(x, y, idx, fit) -> list[float]:
    """Error of each head on rows ``idx`` (all if None), from whole counts (no float32 drift)."""
    w, b, mean, std, _ = fit
    n = x.shape[0] if idx is None else idx.numel()
    acc = accuracy_per_head(x, y, idx, w, b, mean, std).double().cpu()
    return [(n - round(float(a) * n)) / n for a in acc]


def _train_train(x, y, c, wds, seed, kw) -> dict:
    fit = _fit(x, y, None, c, wds, seed=seed, **kw)
    errs = _errors(x, y, None, fit)
    best = min(range(len(wds)), key=lambda i: (errs[i], i))
    return {"error": errs[best], "weight_decay": float(wds[best]), "per_weight_decay": dict(zip(map(float, wds), errs))}


def _select(x, y, rows, c, wds, val_fraction, seed, kw) -> tuple[float, str]:
    """The penalty with the best accuracy on a seeded stratified ``val_fraction`` of ``rows``, the
    heads fit on the rest (first maximum: the smallest penalty among ties), and how it was chosen."""
    part, held = stratified_split(y[rows].cpu(), val_fraction, seed)
    acc = [1 - e for e in _errors(x, y, rows[held], _fit(x, y, rows[part], c, wds, seed=seed, **kw))]
    best = max(range(len(wds)), key=lambda i: (acc[i], -i))
    return float(wds[best]), f"best on a held-out {val_fraction:.0%} (seed {seed}), fit on the rest"


def subset_split(labels: torch.Tensor, n_sub: int, seed: int, seen: torch.Tensor | None = None):
    """(complement, subset) indices: a seeded stratified subset of about ``n_sub`` rows, drawn from
    the ``seen`` rows (the images the encoder trained on) when given; the complement is the rest."""
    pool = torch.arange(labels.numel()) if seen is None else torch.as_tensor(seen).long().sort().values
    if n_sub >= pool.numel():
        raise DataError(
            f"decompose: a held-out subset of {n_sub} images needs more than the {pool.numel()} seen training "
            "images; lower eval.decompose.subset"
        )
    _, sub = stratified_split(labels[pool].cpu(), n_sub / pool.numel(), seed)
    sub = pool[sub]
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[sub] = False
    return mask.nonzero().flatten(), sub


def risk_decomposition(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    weight_decays: Sequence[float],
    subset: int | None = None,
    seen: torch.Tensor | None = None,
    reference_x: torch.Tensor | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    epochs: int = 10,
    min_steps: int = 1000,
    batch_size: int = 1024,
) -> dict:
    """The decomposition of ``train_x -> test_x``'s linear-probe error (see the module docstring).

    ``seen``: indices of the training rows the encoder saw in SSL training (None: all of them);
    ``reference_x``: a supervised encoder's features of the same training rows (None: no
    approximation term). Returns the four components (errors as fractions), ``test_error``, their
    ``definitions``, the ``fits`` (error, penalty, selection of each), ``sizes`` and ``dominant``.
    """
    train_y, test_y, c = check_labelled(train_x, train_y, test_x, test_y, "decompose")
    if not weight_decays:
        raise DataError("decompose: eval.decompose.weight_decays is empty; give at least one penalty")
    n_seen = train_x.shape[0] if seen is None else len(seen)
    n_sub = int(subset) if subset is not None else min(test_x.shape[0], n_seen // 2)  # the test set's size
    comp, sub = subset_split(train_y, n_sub, seed, seen)
    kw = dict(epochs=epochs, min_steps=min_steps, batch_size=batch_size)
    ff = _train_train(train_x, train_y, c, weight_decays, seed, kw)
    comp_wd, comp_sel = _select(train_x, train_y, comp, c, weight_decays, val_fraction, seed + 1, kw)
    all_wd, all_sel = _select(
        train_x, train_y, torch.arange(len(train_y)), c, weight_decays, val_fraction, seed + 2, kw
    )
    cs = _errors(train_x, train_y, sub, _fit(train_x, train_y, comp, c, [comp_wd], seed=seed, **kw))[0]
    tt = _errors(test_x, test_y, None, _fit(train_x, train_y, None, c, [all_wd], seed=seed, **kw))[0]
    fits = {
        "train_train": {**ff, "selection": "lowest training error (training data only)"},
        "comp_sub": {"error": cs, "weight_decay": comp_wd, "selection": f"{comp_sel} of the complement"},
        "train_test": {"error": tt, "weight_decay": all_wd, "selection": f"{all_sel} of the training split"},
    }
    out: dict = {"test_error": tt}
    if reference_x is not None:
        ref = _train_train(reference_x, train_y, c, weight_decays, seed, kw)
        fits["reference_train_train"] = {**ref, "selection": "lowest training error (training data only)"}
        out["approximation"] = ref["error"]
        out["usability"] = ff["error"] - ref["error"]
    else:
        out["usability"] = ff["error"]
        out["approximation_note"] = MERGED_NOTE
    out["probe_generalisation"] = cs - ff["error"]
    out["encoder_generalisation"] = tt - cs
    parts = {k: out[k] for k in COMPONENTS if k in out}
    out["dominant"] = max(parts, key=lambda k: parts[k])
    out["definitions"] = {k: DEFINITIONS[k] for k in COMPONENTS if k in out or k == "approximation"}
    out["fits"] = fits
    out["sizes"] = {
        "train": int(train_x.shape[0]),
        "complement": int(comp.numel()),
        "subset": int(sub.numel()),
        "test": int(test_x.shape[0]),
        "seen": int(n_seen),
    }
    return out
